#!/bin/sh
# The exported ABI of libflclient.so, three ways (docs/ABI.md): the functions the public headers
# declare (FL_API in fl/client.h, the functions of fl/err.h), the names flclient.map lists, and
# the dynamic symbols the built library defines must be the same set; every exported symbol
# carries the version node the map lists it under, no node is newer than the project version
# (NODE, FLCLIENT_<major>.<minor>: a node is named after the release that adds it), and the
# SONAME is the one the policy gives.
#   check_symbols.sh client.h err.h flclient.map libflclient.so SONAME NODE
set -eu
client_h=$1 err_h=$2 map=$3 so=$4 soname=$5 newest=$6
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Declarations: "FL_API <type> <name>(" in client.h (the macro's own definition excluded) and
# top-level function prototypes in err.h.
{
  grep -E '^FL_API ' "$client_h" | grep -v '__attribute__' |
    sed -E 's/^[^(]*[ *](fl_[a-z0-9_]+)\(.*/\1/'
  grep -E '^[a-z].*[ *]fl_[a-z0-9_]+\(' "$err_h" | sed -E 's/^[^(]*[ *](fl_[a-z0-9_]+)\(.*/\1/'
} | sort -u >"$tmp/headers"
sed -n '/global:/,/local:/p' "$map" | grep -E '^ *fl_[a-z0-9_]+;' | sed -E 's/[ ;]//g' |
  sort -u >"$tmp/map"
# Defined dynamic symbols other than the version nodes themselves (type A).
nm -D --defined-only "$so" | awk '$2 != "A" {print $3}' >"$tmp/raw"
sed -E 's/@.*//' "$tmp/raw" | sort -u >"$tmp/library"

status=0
for pair in "headers map" "headers library"; do
  set -- $pair
  if ! diff -u "$tmp/$1" "$tmp/$2" >"$tmp/diff"; then
    echo "check_symbols: the $1 and the $2 disagree (- only in $1, + only in $2):"
    sed -n '3,$p' "$tmp/diff" | grep -E '^[-+]'
    status=1
  fi
done
# Each symbol's node: the one the map lists it under, and the one the library gives it.
awk '/^FLCLIENT_[0-9.]+ *\{/ {node = $1; sub(/\{.*/, "", node)}
     /^ *fl_[a-z0-9_]+;/ {name = $1; sub(/;.*/, "", name); print name "@" node}' "$map" |
  sort -u >"$tmp/map_nodes"
sed -E 's/@@?/@/' "$tmp/raw" | sort -u >"$tmp/library_nodes"
if ! diff -u "$tmp/map_nodes" "$tmp/library_nodes" >"$tmp/diff"; then
  echo "check_symbols: symbol versions differ (- the map's node, + the library's):"
  sed -n '3,$p' "$tmp/diff" | grep -E '^[-+]'
  status=1
fi
nodes=$(sed -n -E 's/^(FLCLIENT_[0-9.]+) *\{.*/\1/p' "$map")
for n in $nodes; do
  if [ "$(printf '%s\n%s\n' "$n" "$newest" | sort -V | tail -n 1)" != "$newest" ]; then
    echo "check_symbols: node $n is newer than the project version's $newest (docs/ABI.md:" \
      "a new function while the major is 0 raises the minor, and with it the SONAME)"
    status=1
  fi
done
node=$(echo "$nodes" | tail -n 1)
got=$(readelf -d "$so" | sed -n -E 's/.*\(SONAME\).*\[(.*)\]/\1/p')
if [ "$got" != "$soname" ]; then
  echo "check_symbols: SONAME is '$got', the policy says '$soname'"
  status=1
fi
[ $status -ne 0 ] || echo "check_symbols: $(wc -l <"$tmp/library") symbols, node $node, SONAME $got"
exit $status

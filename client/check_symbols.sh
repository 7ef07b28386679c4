#!/bin/sh
# The exported ABI of libflclient.so, three ways (docs/ABI.md): the functions the public headers
# declare (FL_API in fl/client.h, the functions of fl/err.h), the names flclient.map lists, and
# the dynamic symbols the built library defines must be the same set; every exported symbol
# carries the map's version node, and the SONAME is the one the policy gives.
#   check_symbols.sh client.h err.h flclient.map libflclient.so SONAME
set -eu
client_h=$1 err_h=$2 map=$3 so=$4 soname=$5
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
node=$(sed -n -E 's/^(FLCLIENT_[0-9.]+) *\{.*/\1/p' "$map" | head -n 1)
unversioned=$(grep -v "@@*$node\$" "$tmp/raw" | grep -v '@@*FLCLIENT_' || true)
if [ -n "$unversioned" ]; then
  echo "check_symbols: exported without a FLCLIENT_ version: $unversioned"
  status=1
fi
got=$(readelf -d "$so" | sed -n -E 's/.*\(SONAME\).*\[(.*)\]/\1/p')
if [ "$got" != "$soname" ]; then
  echo "check_symbols: SONAME is '$got', the policy says '$soname'"
  status=1
fi
[ $status -ne 0 ] || echo "check_symbols: $(wc -l <"$tmp/library") symbols, node $node, SONAME $got"
exit $status

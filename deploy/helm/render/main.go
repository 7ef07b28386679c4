// chart-render renders a Helm chart the way `helm template` does, for machines where helm is
// not packaged (Debian 12): Go's text/template with the Sprig functions (the same engine and
// function library as Helm) plus Helm's own functions (include, tpl, required, fail, toYaml,
// fromYaml, toJson), values.yaml deep-merged with -f files and --set key=value pairs, and the
// built-in objects .Values, .Chart, .Release, .Capabilities and .Template.
//
//	chart-render [-f values.yaml]... [--set a.b=c]... [--name R] [--namespace N] [--notes] CHART_DIR
//
// Prints the rendered manifests (each after "---" and a "# Source:" line, as helm does) on
// stdout; exits 1 with the template error on stderr when rendering fails (e.g. a `required`).
//
// Build (Debian packages golang-go, golang-github-masterminds-sprig-dev, golang-gopkg-yaml.v3-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o chart-render deploy/helm/render/main.go
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// normalize turns yaml.v3's map[string]interface{} trees into plain maps and slices (already
// the case) and leaves scalars alone; it exists so that merged values have one shape.
func normalize(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = normalize(e)
		}
		return t
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, e := range t {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []interface{}:
		for i, e := range t {
			t[i] = normalize(e)
		}
		return t
	}
	return v
}

// merge copies src into dst, recursing into maps (Helm's coalescing of values files).
func merge(dst, src map[string]interface{}) {
	for k, v := range src {
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
}

func loadYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return normalize(m).(map[string]interface{}), nil
}

// setValue applies one --set a.b.c=value; value types follow helm: int, bool, null, string.
func setValue(values map[string]interface{}, expr string) error {
	eq := strings.IndexByte(expr, '=')
	if eq <= 0 {
		return fmt.Errorf("--set %q: want key=value", expr)
	}
	keys := strings.Split(expr[:eq], ".")
	raw := expr[eq+1:]
	var val interface{} = raw
	if n, err := strconv.ParseInt(raw, 10, 64); err == nil {
		val = n
	} else if raw == "true" || raw == "false" {
		val = raw == "true"
	} else if raw == "null" {
		val = nil
	}
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	m[keys[len(keys)-1]] = val
	return nil
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	enc.Close()
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	var files, sets multiFlag
	flag.Var(&files, "f", "values file (repeatable)")
	flag.Var(&sets, "set", "key=value (repeatable)")
	release := flag.String("name", "release", "release name")
	namespace := flag.String("namespace", "default", "namespace")
	notes := flag.Bool("notes", false, "print NOTES.txt after the manifests")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-f FILE]... [--set k=v]... [--name R] [--namespace N] [--notes] CHART_DIR")
		os.Exit(2)
	}
	chartDir := flag.Arg(0)
	if err := run(chartDir, files, sets, *release, *namespace, *notes); err != nil {
		fmt.Fprintln(os.Stderr, "chart-render:", err)
		os.Exit(1)
	}
}

func run(chartDir string, files, sets []string, release, namespace string, notes bool) error {
	chartMeta, err := loadYAML(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	for _, k := range []string{"apiVersion", "name", "version"} {
		if _, ok := chartMeta[k]; !ok {
			return fmt.Errorf("Chart.yaml has no %s", k)
		}
	}
	values, err := loadYAML(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range files {
		over, err := loadYAML(f)
		if err != nil {
			return err
		}
		merge(values, over)
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return err
		}
	}
	chartName := fmt.Sprint(chartMeta["name"])
	chart := map[string]interface{}{
		"Name": chartName, "Version": fmt.Sprint(chartMeta["version"]),
		"AppVersion": fmt.Sprint(chartMeta["appVersion"]), "Description": chartMeta["description"],
		"Type": chartMeta["type"], "APIVersion": chartMeta["apiVersion"],
	}
	top := map[string]interface{}{
		"Values": values,
		"Chart":  chart,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.28.0", "Major": "1", "Minor": "28"},
		},
	}

	root := template.New("chart")
	funcs := sprig.TxtFuncMap()
	// Helm removes these two: templates must not read the renderer's environment.
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includes := 0
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includes++
		if includes > 1000 {
			return "", errors.New("include nested too deeply")
		}
		defer func() { includes-- }()
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} {
		return map[string]interface{}{}
	}
	root.Funcs(funcs).Option("missingkey=zero")

	tplDir := filepath.Join(chartDir, "templates")
	entries, err := os.ReadDir(tplDir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := e.Name()
		data, err := os.ReadFile(filepath.Join(tplDir, name))
		if err != nil {
			return err
		}
		full := chartName + "/templates/" + name
		if _, err := root.New(full).Parse(string(data)); err != nil {
			return err
		}
		names = append(names, name)
	}
	sort.Strings(names)
	var out bytes.Buffer
	var notesText string
	for _, name := range names {
		if strings.HasPrefix(name, "_") {
			continue
		}
		full := chartName + "/templates/" + name
		scope := map[string]interface{}{}
		for k, v := range top {
			scope[k] = v
		}
		scope["Template"] = map[string]interface{}{"Name": full, "BasePath": chartName + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, full, scope); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if name == "NOTES.txt" {
			notesText = text
			continue
		}
		if !strings.HasSuffix(name, ".yaml") && !strings.HasSuffix(name, ".yml") {
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", full, strings.TrimRight(text, "\n"))
	}
	if notes && notesText != "" {
		fmt.Fprintf(&out, "\nNOTES:\n%s\n", notesText)
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

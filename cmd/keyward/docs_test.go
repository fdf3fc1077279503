package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docFiles are the documents that name keyward's flags and metrics.
func docFiles(t *testing.T) []string {
	t.Helper()
	files := []string{"../../README.md"}
	for _, pattern := range []string{"../../docs/*.md", "../../docs/integrations/*.md", "../../charts/keyward/values.yaml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	return files
}

// TestDocumentedFlagsExist checks that every keyward flag the documents name is a flag of
// some role: a renamed flag must not leave the guides behind.
func TestDocumentedFlagsExist(t *testing.T) {
	known := map[string]bool{}
	for _, r := range roles {
		fs := flag.NewFlagSet(r.name, flag.ContinueOnError)
		(&options{}).bind(fs, r)
		fs.VisitAll(func(f *flag.Flag) { known[f.Name] = true })
	}
	// Flags of keyward's own, by prefix; other tools' flags (kubectl, helm) are not checked.
	ours := regexp.MustCompile(`--((?:authz|issuer|watch|shutdown|allow|trusted|public|metrics|health|leader)-[a-z0-9-]*[a-z0-9])`)
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ours.FindAllStringSubmatch(string(b), -1) {
			if !known[m[1]] {
				t.Errorf("%s names --%s, which no role has", f, m[1])
			}
		}
	}
}

// TestDocumentedMetricsExist checks that every keyward_ metric the documents name is
// registered by the code.
func TestDocumentedMetricsExist(t *testing.T) {
	var code strings.Builder
	for _, pattern := range []string{"../../internal/*/metrics.go"} {
		m, _ := filepath.Glob(pattern)
		for _, f := range m {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			code.Write(b)
		}
	}
	metric := regexp.MustCompile(`keyward_[a-z_]+[a-z]`)
	for _, f := range docFiles(t) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range metric.FindAllString(string(b), -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && strings.HasSuffix(base, "_seconds") {
					name = base
				}
			}
			if !strings.Contains(code.String(), `"`+name+`"`) {
				t.Errorf("%s names metric %s, which is not registered", f, name)
			}
		}
	}
}

package remote

import (
	"net/url"
	"testing"
)

func TestNextLink(t *testing.T) {
	base, _ := url.Parse("https://hub.example/api/models/o/r/tree/abc")
	for _, c := range []struct {
		links []string
		want  string
	}{
		{nil, ""},
		{[]string{`<https://hub.example/api/models/o/r/tree/abc?cursor=x>; rel="next"`}, "https://hub.example/api/models/o/r/tree/abc?cursor=x"},
		{[]string{`</api/models/o/r/tree/abc?cursor=y>; rel="prev", </api/models/o/r/tree/abc?cursor=z>; rel="next"`}, "https://hub.example/api/models/o/r/tree/abc?cursor=z"},
		// Another host would get the token: not followed.
		{[]string{`<https://evil.example/steal>; rel="next"`}, ""},
		{[]string{`garbage`}, ""},
	} {
		got := nextLink(base, c.links)
		if (got == nil) != (c.want == "") || got != nil && got.String() != c.want {
			t.Errorf("nextLink(%q) = %v, want %q", c.links, got, c.want)
		}
	}
}

func TestIsDirURL(t *testing.T) {
	for u, want := range map[string]bool{
		"hf://org/repo":                   true,
		"hf://org/repo/":                  true,
		"hf://org/repo/model.safetensors": false,
		"https://h/m/":                    true,
		"https://h/m/model.safetensors":   false,
		"s3://b/prefix/":                  true,
		"s3://b/k.safetensors":            false,
		"/local/dir":                      false,
	} {
		if got := IsDirURL(u); got != want {
			t.Errorf("IsDirURL(%q) = %v, want %v", u, got, want)
		}
	}
}

package v1alpha1_test

import (
	"fmt"
	"strings"
	"testing"
)

func baseAccessPolicySpec() object {
	return object{
		"hosts": []any{"app.example.test", "*.apps.example.test"},
		"rules": []any{
			object{"paths": []any{"/public/"}, "anonymous": true},
			object{"paths": []any{"/admin/"}, "methods": []any{"GET", "POST"}, "issuers": []any{object{"name": "main"}},
				"audiences": []any{"api"}, "when": "'admin' in claims.groups"},
			object{"paths": []any{"/"}, "issuers": []any{object{"name": "main"}, object{
				"issuerURL": "https://login.example.test/realms/main", "jwksURL": "https://login.example.test/realms/main/certs",
				"caBundle": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "leeway": "1m"}},
				"audiences": []any{"api"}, "headers": object{"X-User": "sub", "X-Groups": "groups"}},
		},
	}
}

// rule returns the i-th rule of a spec.
func rule(o object, i int) object { return o["rules"].([]any)[i].(object) }

// issuer returns the j-th issuer of rule i.
func issuer(o object, i, j int) object { return rule(o, i)["issuers"].([]any)[j].(object) }

func TestAccessPolicyValidation(t *testing.T) {
	ns := newNamespace(t)
	cases := []celCase{
		{name: "the base object is accepted", mutate: func(object) {}},
		{name: "the issue's sample is accepted", mutate: func(o object) {
			clear(o)
			o["hosts"] = []any{"app.example.test"}
			o["rules"] = []any{
				object{"paths": []any{"/public/"}, "anonymous": true},
				object{"paths": []any{"/admin/"}, "issuers": []any{object{"name": "main"}}, "audiences": []any{"api"}, "when": "'admin' in claims.groups"},
				object{"paths": []any{"/"}, "issuers": []any{object{"name": "main"}}, "audiences": []any{"api"}, "headers": object{"X-User": "sub", "X-Groups": "groups"}},
			}
		}},
		{name: "a policy without hosts is refused", mutate: func(o object) { delete(o, "hosts") }, wantErr: "spec.hosts: Required value"},
		{name: "an empty hosts list is refused", mutate: func(o object) { o["hosts"] = []any{} }, wantErr: "spec.hosts: Invalid value"},
		{name: "65 hosts are refused", mutate: func(o object) {
			o["hosts"] = listOf(65, func(i int) string { return fmt.Sprintf("h%d.example.test", i) })
		}, wantErr: "must have at most 64 items"},
		{name: "a host listed twice is refused", mutate: func(o object) { o["hosts"] = []any{"a.test", "a.test"} }, wantErr: `Duplicate value: "a.test"`},
		{name: "the host * is accepted", mutate: func(o object) { o["hosts"] = []any{"*"} }},
		{name: "an uppercase host is refused", mutate: func(o object) { o["hosts"] = []any{"App.example.test"} }, wantErr: "hosts must be lowercase DNS names"},
		{name: "a host with a port is refused", mutate: func(o object) { o["hosts"] = []any{"app.example.test:443"} }, wantErr: "hosts must be lowercase DNS names"},
		{name: "a wildcard in the middle is refused", mutate: func(o object) { o["hosts"] = []any{"app.*.test"} }, wantErr: "hosts must be lowercase DNS names"},
		{name: "a bare *. is refused", mutate: func(o object) { o["hosts"] = []any{"*."} }, wantErr: "hosts must be lowercase DNS names"},
		{name: "a host longer than 253 characters is refused", mutate: func(o object) { o["hosts"] = []any{strings.Repeat("a", 254)} }, wantErr: "Too long"},
		{name: "a policy without rules is refused", mutate: func(o object) { delete(o, "rules") }, wantErr: "spec.rules: Required value"},
		{name: "65 rules are refused", mutate: func(o object) {
			rules := make([]any, 65)
			for i := range rules {
				rules[i] = object{"paths": []any{fmt.Sprintf("/p%d/", i)}, "anonymous": true}
			}
			o["rules"] = rules
		}, wantErr: "must have at most 64 items"},
		{name: "a rule without paths is refused", mutate: func(o object) { delete(rule(o, 0), "paths") }, wantErr: "spec.rules[0].paths: Required value"},
		{name: "a path without a leading slash is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"public/"} }, wantErr: "paths must start with '/'"},
		{name: "a path with a query is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"/a?b"} }, wantErr: "paths must be plain, normalized paths"},
		{name: "a path with percent-encoding is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"/a%2F"} }, wantErr: "paths must be plain, normalized paths"},
		{name: "a path with a dot segment is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"/a/../b"} }, wantErr: "paths must be plain, normalized paths"},
		{name: "a path ending in a dot segment is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"/a/.."} }, wantErr: "paths must be plain, normalized paths"},
		{name: "a path with a double slash is refused", mutate: func(o object) { rule(o, 0)["paths"] = []any{"//a"} }, wantErr: "paths must be plain, normalized paths"},
		{name: "33 paths are refused", mutate: func(o object) { rule(o, 0)["paths"] = listOf(33, func(i int) string { return fmt.Sprintf("/p%d", i) }) }, wantErr: "must have at most 32 items"},
		{name: "an unknown method is refused", mutate: func(o object) { rule(o, 1)["methods"] = []any{"FETCH"} }, wantErr: `Unsupported value: "FETCH"`},
		{name: "a lowercase method is refused", mutate: func(o object) { rule(o, 1)["methods"] = []any{"get"} }, wantErr: `Unsupported value: "get"`},
		{name: "a method listed twice is refused", mutate: func(o object) { rule(o, 1)["methods"] = []any{"GET", "GET"} }, wantErr: `Duplicate value: "GET"`},
		{name: "an anonymous rule with issuers is refused", mutate: func(o object) { rule(o, 0)["issuers"] = []any{object{"name": "main"}} },
			wantErr: "an anonymous rule has no issuers, audiences, when or headers; any other rule needs issuers"},
		{name: "an anonymous rule with audiences is refused", mutate: func(o object) { rule(o, 0)["audiences"] = []any{"api"} },
			wantErr: "an anonymous rule has no issuers"},
		{name: "an anonymous rule with when is refused", mutate: func(o object) { rule(o, 0)["when"] = "true" }, wantErr: "an anonymous rule has no issuers"},
		{name: "an anonymous rule with headers is refused", mutate: func(o object) { rule(o, 0)["headers"] = object{"X-User": "sub"} }, wantErr: "an anonymous rule has no issuers"},
		{name: "a rule neither anonymous nor with issuers is refused", mutate: func(o object) { delete(rule(o, 2), "issuers") }, wantErr: "any other rule needs issuers"},
		{name: "anonymous false with issuers is accepted", mutate: func(o object) { rule(o, 2)["anonymous"] = false }},
		{name: "an empty issuers list is refused", mutate: func(o object) { rule(o, 2)["issuers"] = []any{} }, wantErr: "spec.rules[2].issuers: Invalid value"},
		{name: "nine issuers are refused", mutate: func(o object) {
			rule(o, 2)["issuers"] = []any{}
			for i := range 9 {
				rule(o, 2)["issuers"] = append(rule(o, 2)["issuers"].([]any), object{"name": fmt.Sprintf("i%d", i)})
			}
		}, wantErr: "must have at most 8 items"},
		{name: "an issuer with neither name nor issuerURL is refused", mutate: func(o object) { rule(o, 2)["issuers"] = []any{object{}} },
			wantErr: "exactly one of name and issuerURL must be set"},
		{name: "an issuer with both name and issuerURL is refused", mutate: func(o object) { issuer(o, 2, 0)["issuerURL"] = "https://a.test" },
			wantErr: "exactly one of name and issuerURL must be set"},
		{name: "jwksURL on a TokenIssuer reference is refused", mutate: func(o object) { issuer(o, 2, 0)["jwksURL"] = "https://a.test/jwks" },
			wantErr: "discoveryURL, jwksURL, caBundle and leeway apply to external issuers (issuerURL) only"},
		{name: "caBundle on a TokenIssuer reference is refused", mutate: func(o object) { issuer(o, 2, 0)["caBundle"] = "x" },
			wantErr: "apply to external issuers (issuerURL) only"},
		{name: "leeway on a TokenIssuer reference is refused", mutate: func(o object) { issuer(o, 2, 0)["leeway"] = "10s" },
			wantErr: "apply to external issuers (issuerURL) only"},
		{name: "discoveryURL with jwksURL is refused", mutate: func(o object) { issuer(o, 2, 1)["discoveryURL"] = "https://a.test/.well-known/openid-configuration" },
			wantErr: "discoveryURL and jwksURL are mutually exclusive"},
		{name: "an external issuer with discovery only is accepted", mutate: func(o object) { delete(issuer(o, 2, 1), "jwksURL") }},
		{name: "an issuerURL that is not a URL is refused", mutate: func(o object) { issuer(o, 2, 1)["issuerURL"] = "login.example.test" },
			wantErr: "issuerURL must be an http or https URL with a host and no query or fragment"},
		{name: "an issuerURL with a query is refused", mutate: func(o object) { issuer(o, 2, 1)["issuerURL"] = "https://a.test/?x=1" },
			wantErr: "issuerURL must be an http or https URL with a host and no query or fragment"},
		{name: "an ftp jwksURL is refused", mutate: func(o object) { issuer(o, 2, 1)["jwksURL"] = "ftp://a.test/jwks" }, wantErr: "jwksURL must be an http or https URL with a host"},
		{name: "a discoveryURL without a host is refused", mutate: func(o object) {
			delete(issuer(o, 2, 1), "jwksURL")
			issuer(o, 2, 1)["discoveryURL"] = "https:///x"
		}, wantErr: "discoveryURL must be an http or https URL with a host"},
		{name: "an external leeway above 5m is refused", mutate: func(o object) { issuer(o, 2, 1)["leeway"] = "6m" }, wantErr: "leeway must be between 0s and 5m"},
		{name: "an external leeway that is not a duration is refused", mutate: func(o object) { issuer(o, 2, 1)["leeway"] = "soon" }, wantErr: "must be of type duration"},
		{name: "a caBundle above 64 KiB is refused", mutate: func(o object) { issuer(o, 2, 1)["caBundle"] = strings.Repeat("a", 65537) }, wantErr: "Too long"},
		{name: "an empty when is refused", mutate: func(o object) { rule(o, 1)["when"] = "" }, wantErr: "should be at least 1 chars long"},
		{name: "a when longer than 2048 characters is refused", mutate: func(o object) { rule(o, 1)["when"] = strings.Repeat("a", 2049) }, wantErr: "Too long"},
		{name: "a when that does not compile is accepted by the API (the controller reports it)", mutate: func(o object) { rule(o, 1)["when"] = "claims.(" }},
		{name: "17 audiences are refused", mutate: func(o object) {
			rule(o, 1)["audiences"] = listOf(17, func(i int) string { return fmt.Sprintf("a%d", i) })
		}, wantErr: "must have at most 16 items"},
		{name: "17 header mappings are refused", mutate: func(o object) {
			h := object{}
			for i := range 17 {
				h[fmt.Sprintf("X-H%d", i)] = "sub"
			}
			rule(o, 2)["headers"] = h
		}, wantErr: "must have at most 16 items"},
		{name: "a header name with a space is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{"X User": "sub"} }, wantErr: "header names must be letters, digits and '-'"},
		{name: "a header name longer than 64 characters is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{strings.Repeat("X", 65): "sub"} }, wantErr: "header names must be letters, digits and '-'"},
		{name: "mapping a claim to Authorization is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{"authorization": "sub"} }, wantErr: "headers must not set Authorization"},
		{name: "mapping a claim to an identity header is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{"X-Auth-Request-User": "email"} }, wantErr: "headers must not set Authorization"},
		{name: "an empty claim name is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{"X-User": ""} }, wantErr: "should be at least 1 chars long"},
		{name: "a claim name longer than 128 characters is refused", mutate: func(o object) { rule(o, 2)["headers"] = object{"X-User": strings.Repeat("c", 129)} }, wantErr: "Too long"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := baseAccessPolicySpec()
			tc.mutate(spec)
			checkCreate(t, newObject("AccessPolicy", ns, fmt.Sprintf("ap-%d", i), spec), tc.wantErr)
		})
	}
}

package issuer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxBodyBytes caps every request body. keyward's requests are a few hundred bytes.
const maxBodyBytes = 16 << 10

// errBodyTooLarge is returned for a body over maxBodyBytes.
var errBodyTooLarge = errors.New("request body too large")

// readBody reads the (capped) body.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, errBodyTooLarge
		}
		return nil, fmt.Errorf("cannot read body: %w", err)
	}
	return body, nil
}

// jsonKind classifies a decoded JSON value as DRF sees it.
type fieldValue struct {
	// kind is "string", "number", "null", "bool", "list" or "dict".
	kind string
	s    string
}

// strictJSON decodes one JSON value: no trailing data, no duplicate member names at any depth
// (a parser differential keyward refuses, where Python keeps the last), numbers kept as
// literals. Objects decode to map[string]any, arrays to []any.
func strictJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("extra data after the JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return nil, errors.New("expecting value")
		}
		return nil, errors.New("expecting value: " + err.Error())
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			m := map[string]any{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, errors.New("expecting property name: " + err.Error())
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("expecting property name enclosed in double quotes")
				}
				if _, dup := m[k]; dup {
					return nil, fmt.Errorf("duplicate member name %s", strconv.Quote(k))
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				m[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, errors.New("expecting ',' delimiter: " + err.Error())
			}
			return m, nil
		case '[':
			a := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, errors.New("expecting ',' delimiter: " + err.Error())
			}
			return a, nil
		default:
			return nil, errors.New("expecting value")
		}
	default:
		return tok, nil
	}
}

// pythonType names a decoded JSON value's type as Python does, for DRF's messages.
func pythonType(v any) string {
	switch x := v.(type) {
	case []any:
		return "list"
	case string:
		return "str"
	case bool:
		return "bool"
	case json.Number:
		if strings.ContainsAny(string(x), ".eE") {
			return "float"
		}
		return "int"
	default:
		return "dict"
	}
}

// drfError is an error response in Django REST framework's shape.
type drfError struct {
	status int
	body   []byte
}

func detailError(status int, detail string) *drfError {
	return &drfError{status: status, body: mustJSON(map[string]string{"detail": detail})}
}

// parseDRF reads a request body the way DRF's default parsers do (JSON, form, multipart) and
// returns its fields. Unknown fields are ignored, as DRF serializers ignore them.
func parseDRF(w http.ResponseWriter, r *http.Request) (map[string]fieldValue, *drfError) {
	body, err := readBody(w, r)
	if err != nil {
		if errors.Is(err, errBodyTooLarge) {
			return nil, detailError(http.StatusRequestEntityTooLarge, "Request body too large.")
		}
		return nil, detailError(http.StatusBadRequest, "Cannot read the request body.")
	}
	fields := map[string]fieldValue{}
	if len(body) == 0 {
		return fields, nil
	}
	ct := r.Header.Get("Content-Type")
	mt, params, _ := mime.ParseMediaType(ct)
	switch mt {
	case "application/json":
		v, err := strictJSON(body)
		if err != nil {
			return nil, detailError(http.StatusBadRequest, "JSON parse error - "+err.Error())
		}
		switch obj := v.(type) {
		case nil:
			return nil, fieldErrors([]fieldError{{"non_field_errors", "No data provided"}})
		case map[string]any:
			for k, x := range obj {
				fields[k] = jsonField(x)
			}
			return fields, nil
		default:
			return nil, fieldErrors([]fieldError{{"non_field_errors", "Invalid data. Expected a dictionary, but got " + pythonType(v) + "."}})
		}
	case "application/x-www-form-urlencoded":
		q, _ := url.ParseQuery(string(body))
		for k, vs := range q {
			fields[k] = fieldValue{kind: "string", s: vs[len(vs)-1]}
		}
		return fields, nil
	case "multipart/form-data":
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.Header.Set("Content-Type", mime.FormatMediaType(mt, params))
		//nolint:gosec // G120: the body was read above through http.MaxBytesReader and is at most maxBodyBytes
		if err := r.ParseMultipartForm(maxBodyBytes); err != nil {
			return nil, detailError(http.StatusBadRequest, "Multipart form parse error - "+err.Error())
		}
		for k, vs := range r.MultipartForm.Value {
			fields[k] = fieldValue{kind: "string", s: vs[len(vs)-1]}
		}
		return fields, nil
	default:
		return nil, detailError(http.StatusUnsupportedMediaType, "Unsupported media type \""+ct+"\" in request.")
	}
}

func jsonField(v any) fieldValue {
	switch x := v.(type) {
	case nil:
		return fieldValue{kind: "null"}
	case string:
		return fieldValue{kind: "string", s: x}
	case json.Number:
		return fieldValue{kind: "number", s: x.String()}
	case bool:
		return fieldValue{kind: "bool"}
	case []any:
		return fieldValue{kind: "list"}
	default:
		return fieldValue{kind: "dict"}
	}
}

type fieldError struct{ field, message string }

// fieldErrors renders DRF's validation error body: {"field": ["message"], ...}, in order.
func fieldErrors(errs []fieldError) *drfError {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range errs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(mustJSON(e.field))
		b.WriteString(":[")
		b.Write(mustJSON(e.message))
		b.WriteString("]")
	}
	b.WriteByte('}')
	return &drfError{status: http.StatusBadRequest, body: b.Bytes()}
}

// charFields validates the named fields like DRF's CharField (required, not null, a string
// or a number, whitespace trimmed, not blank) and returns their values in order.
func charFields(fields map[string]fieldValue, names ...string) ([]string, *drfError) {
	out := make([]string, len(names))
	var errs []fieldError
	for i, name := range names {
		f, ok := fields[name]
		switch {
		case !ok:
			errs = append(errs, fieldError{name, "This field is required."})
		case f.kind == "null":
			errs = append(errs, fieldError{name, "This field may not be null."})
		case f.kind != "string" && f.kind != "number":
			errs = append(errs, fieldError{name, "Not a valid string."})
		default:
			s := strings.TrimSpace(f.s)
			if s == "" {
				errs = append(errs, fieldError{name, "This field may not be blank."})
			}
			out[i] = s
		}
	}
	if len(errs) > 0 {
		return nil, fieldErrors(errs)
	}
	return out, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

package validator

import (
	"errors"
	"strings"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of the parts of envoy.service.auth.v3.CheckRequest the validator reads
// (envoy/service/auth/v3/external_auth.proto, attribute_context.proto;
// envoy/config/core/v3/base.proto).
const (
	fieldCheckRequestAttributes = 1  // CheckRequest.attributes: AttributeContext
	fieldAttributesRequest      = 4  // AttributeContext.request: AttributeContext.Request
	fieldRequestHTTP            = 2  // AttributeContext.Request.http: HttpRequest
	fieldHTTPMethod             = 2  // HttpRequest.method: string
	fieldHTTPHeaders            = 3  // HttpRequest.headers: map<string, string>
	fieldHTTPPath               = 4  // HttpRequest.path: string
	fieldHTTPHost               = 5  // HttpRequest.host: string
	fieldHTTPHeaderMap          = 13 // HttpRequest.header_map: HeaderMap
	fieldMapEntryKey            = 1
	fieldMapEntryValue          = 2
	fieldHeaderMapHeaders       = 1 // HeaderMap.headers: repeated HeaderValue
	fieldHeaderValueKey         = 1 // HeaderValue.key: string
	fieldHeaderValueValue       = 2 // HeaderValue.value: string
	fieldHeaderValueRawValue    = 3 // HeaderValue.raw_value: bytes
)

// httpStringFields are the other string fields of HttpRequest (id, scheme, query, fragment,
// protocol, body): not used, but checked for UTF-8 as protobuf does.
var httpStringFields = [...]protowire.Number{1, 6, 7, 8, 10, 11}

var (
	errMalformedCheck = errors.New("malformed CheckRequest")
	errInvalidUTF8    = errors.New("CheckRequest: string field contains invalid UTF-8")
)

// checkRequest is what the validator reads of an envoy.service.auth.v3.CheckRequest,
// decoded from its wire form without building the message: method, host and path of
// attributes.request.http, and the headers it needs from headers and header_map. Decoding
// the whole message (every header Envoy sends, the peers, the metadata) was the largest cost
// of a gRPC check.
type checkRequest struct {
	method, host, path string
	// From the headers map (the last entry of a key wins, as in a decoded map).
	authorization    string
	hasAuthorization bool
	authority        string
	// header_map: present (even empty), how many entries it has, and the value of each
	// entry named authorization (any case), in order.
	hasHeaderMap  bool
	headerMapLen  int
	headerMapAuth []string
	// err is why the message could not be decoded (checkCodec): the request is denied.
	err error
	// alias makes the strings point into the decoded message instead of copying it: set by
	// a caller that owns the message and never modifies or reuses it (h2Conn).
	alias bool
}

// unmarshal decodes b as protobuf's Unmarshal would for the fields it reads: a field
// repeated in the message (or a message field sent several times, which protobuf merges)
// gives the last value of a scalar and every element of a repeated field; a field of the
// wrong wire type is an unknown field; a string field must be valid UTF-8. Fields it does
// not read are skipped without looking inside: a message that is malformed only within
// them is decided on the fields read, where protobuf would refuse the whole message.
func (r *checkRequest) unmarshal(b []byte) error {
	return walkMessage(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != fieldCheckRequestAttributes || typ != protowire.BytesType {
			return nil
		}
		return walkMessage(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
			if num != fieldAttributesRequest || typ != protowire.BytesType {
				return nil
			}
			return walkMessage(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				if num != fieldRequestHTTP || typ != protowire.BytesType {
					return nil
				}
				return walkMessage(v, r.httpField)
			})
		})
	})
}

// httpField reads one field of attributes.request.http.
func (r *checkRequest) httpField(num protowire.Number, typ protowire.Type, v []byte) error {
	if typ != protowire.BytesType {
		return nil
	}
	switch num {
	case fieldHTTPMethod:
		return r.setString(&r.method, v)
	case fieldHTTPPath:
		return r.setString(&r.path, v)
	case fieldHTTPHost:
		return r.setString(&r.host, v)
	case fieldHTTPHeaders:
		var key, value []byte
		err := walkMessage(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
			if typ != protowire.BytesType {
				return nil
			}
			switch num {
			case fieldMapEntryKey:
				key = v
			case fieldMapEntryValue:
				value = v
			default:
				return nil
			}
			return checkUTF8(v)
		})
		if err != nil {
			return err
		}
		switch string(key) {
		case "authorization":
			r.authorization, r.hasAuthorization = r.str(value), true
		case ":authority":
			r.authority = r.str(value)
		}
		return nil
	case fieldHTTPHeaderMap:
		r.hasHeaderMap = true
		return walkMessage(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
			if num != fieldHeaderMapHeaders || typ != protowire.BytesType {
				return nil
			}
			r.headerMapLen++
			var key, value, raw []byte
			err := walkMessage(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
				if typ != protowire.BytesType {
					return nil
				}
				switch num {
				case fieldHeaderValueKey:
					key = v
				case fieldHeaderValueValue:
					value = v
				case fieldHeaderValueRawValue:
					raw = v // bytes: no UTF-8 check
					return nil
				default:
					return nil
				}
				return checkUTF8(v)
			})
			if err != nil {
				return err
			}
			if strings.EqualFold(string(key), "authorization") {
				if len(value) == 0 {
					value = raw
				}
				r.headerMapAuth = append(r.headerMapAuth, r.str(value))
			}
			return nil
		})
	}
	for _, n := range httpStringFields {
		if num == n {
			return checkUTF8(v)
		}
	}
	return nil
}

// request translates the decoded fields: method, host and path; the Authorization header
// from header_map when it has entries (each occurrence separate), else from headers (Envoy
// joins repeated headers with commas); the host from :authority when host is empty.
func (r *checkRequest) request() Request {
	req := Request{Protocol: ProtocolGRPC, Method: r.method, Host: r.host, Path: r.path}
	switch {
	case r.hasHeaderMap && r.headerMapLen > 0:
		req.Authorization = r.headerMapAuth
	case r.hasAuthorization:
		req.Authorization = []string{r.authorization}
	}
	if req.Host == "" {
		req.Host = r.authority
	}
	return req
}

// walkMessage calls f with each field of a message in wire order; the value of a
// length-delimited field is its content, of others the raw field value.
func walkMessage(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformedCheck
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n >= 0 {
				v = b[:n]
			}
		}
		if n < 0 {
			return errMalformedCheck
		}
		b = b[n:]
		if err := f(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

func (r *checkRequest) setString(dst *string, v []byte) error {
	if err := checkUTF8(v); err != nil {
		return err
	}
	*dst = r.str(v)
	return nil
}

// str is v as a string: a copy, or with alias the bytes themselves.
func (r *checkRequest) str(v []byte) string {
	if r.alias && len(v) > 0 {
		return unsafe.String(&v[0], len(v)) //nolint:gosec // alias: the message is never modified (checkRequest.alias)
	}
	return string(v)
}

func checkUTF8(v []byte) error {
	if !utf8.Valid(v) {
		return errInvalidUTF8
	}
	return nil
}

// Field numbers of the parts of envoy.service.auth.v3.CheckResponse an allow sets.
const (
	fieldResponseStatus     = 1 // CheckResponse.status: google.rpc.Status (code 0: empty)
	fieldResponseOK         = 3 // CheckResponse.ok_response: OkHttpResponse
	fieldOKHeaders          = 2 // OkHttpResponse.headers: repeated HeaderValueOption
	fieldOKHeadersToRemove  = 5 // OkHttpResponse.headers_to_remove: repeated string
	fieldOptionHeader       = 1 // HeaderValueOption.header: HeaderValue
	fieldOptionAppendAction = 3 // HeaderValueOption.append_action
	// HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
	appendActionOverwrite = 2
)

// encodeOKResponse encodes the OK CheckResponse of an allow, as protobuf would encode
// {status: {}, ok_response: {headers: [{header: {key, value}, append_action:
// OVERWRITE_IF_EXISTS_OR_ADD}...], headers_to_remove: [...]}}: each header of the decision
// overwrites inbound copies; the other headers the validator owns are removed. Header names
// are lower-cased (HTTP/2).
func encodeOKResponse(d *Decision) encodedMessage {
	headerValueSize := func(h *Header) int {
		n := protowire.SizeTag(fieldHeaderValueKey) + protowire.SizeBytes(len(h.Name))
		if h.Value != "" {
			n += protowire.SizeTag(fieldHeaderValueValue) + protowire.SizeBytes(len(h.Value))
		}
		return n
	}
	optionSize := func(h *Header) int {
		return protowire.SizeTag(fieldOptionHeader) + protowire.SizeBytes(headerValueSize(h)) +
			protowire.SizeTag(fieldOptionAppendAction) + protowire.SizeVarint(appendActionOverwrite)
	}
	ok := 0
	for i := range d.Headers {
		ok += protowire.SizeTag(fieldOKHeaders) + protowire.SizeBytes(optionSize(&d.Headers[i]))
	}
	removed := func(yield func(string) bool) {
	owned:
		for _, name := range d.Remove {
			for _, h := range d.Headers {
				if h.Name == name {
					continue owned
				}
			}
			if !yield(name) {
				return
			}
		}
	}
	for name := range removed {
		ok += protowire.SizeTag(fieldOKHeadersToRemove) + protowire.SizeBytes(len(name))
	}
	size := protowire.SizeTag(fieldResponseStatus) + protowire.SizeBytes(0) +
		protowire.SizeTag(fieldResponseOK) + protowire.SizeBytes(ok)

	b := make([]byte, 0, size)
	b = protowire.AppendTag(b, fieldResponseStatus, protowire.BytesType)
	b = protowire.AppendVarint(b, 0)
	b = protowire.AppendTag(b, fieldResponseOK, protowire.BytesType)
	b = appendLen(b, ok)
	for i := range d.Headers {
		h := &d.Headers[i]
		b = protowire.AppendTag(b, fieldOKHeaders, protowire.BytesType)
		b = appendLen(b, optionSize(h))
		b = protowire.AppendTag(b, fieldOptionHeader, protowire.BytesType)
		b = appendLen(b, headerValueSize(h))
		b = protowire.AppendTag(b, fieldHeaderValueKey, protowire.BytesType)
		b = appendLower(appendLen(b, len(h.Name)), h.Name)
		if h.Value != "" {
			b = protowire.AppendTag(b, fieldHeaderValueValue, protowire.BytesType)
			b = protowire.AppendString(b, h.Value)
		}
		b = protowire.AppendTag(b, fieldOptionAppendAction, protowire.VarintType)
		b = protowire.AppendVarint(b, appendActionOverwrite)
	}
	for name := range removed {
		b = protowire.AppendTag(b, fieldOKHeadersToRemove, protowire.BytesType)
		b = appendLower(appendLen(b, len(name)), name)
	}
	return b
}

// appendLen appends the length prefix of a length-delimited field.
func appendLen(b []byte, n int) []byte {
	return protowire.AppendVarint(b, uint64(n)) //nolint:gosec // a size, never negative
}

// appendLower appends an ASCII header name in lower case.
func appendLower(b []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b
}

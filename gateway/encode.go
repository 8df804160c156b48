package gateway

import (
	"strconv"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// rawJSON is a response body already encoded; restMarshaler sends it as is.
type rawJSON []byte

// restMarshaler is grpc-gateway's JSONPb, except that a rawJSON body is
// written as it is. The bodies of the hot GetToken path are encoded by
// appendToken without reflection; request bodies still decode through
// protojson, after the strict checks of checkBody.
type restMarshaler struct {
	*runtime.JSONPb
}

func newRESTMarshaler() restMarshaler {
	return restMarshaler{&runtime.JSONPb{
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}
}

// Marshal encodes v.
func (m restMarshaler) Marshal(v any) ([]byte, error) {
	if raw, ok := v.(rawJSON); ok {
		return raw, nil
	}
	return m.JSONPb.Marshal(v)
}

// tokenEnvelope encodes {"data": <token>} exactly as json.Marshal would
// encode envelope[Token]{Data: TokenJSON(t)}; a fuzz test holds them equal.
func tokenEnvelope(t *tokenv1.Token) rawJSON {
	b := make([]byte, 0, 320)
	b = append(b, `{"data":`...)
	b = appendToken(b, t)
	return append(b, '}')
}

func appendToken(b []byte, t *tokenv1.Token) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, t.GetId(), 10)
	b = append(b, `,"name":`...)
	b = appendString(b, t.GetName())
	b = append(b, `,"status":"`...)
	b = append(b, statusJSON(t.GetStatus())...)
	b = append(b, `","last_used_at":`...)
	b = appendTime(b, t.GetLastUsedAt())
	b = append(b, `,"usage_count":`...)
	b = strconv.AppendInt(b, t.GetUsageCount(), 10)
	b = append(b, `,"expires_at":`...)
	b = appendTime(b, t.GetExpiresAt())
	b = append(b, `,"created_at":`...)
	b = appendRequiredTime(b, t.GetCreatedAt())
	b = append(b, `,"allowed_ips":`...)
	if ips := t.GetAllowedIps(); len(ips) > 0 {
		b = append(b, '[')
		for i, ip := range ips {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, ip)
		}
		b = append(b, ']')
	} else {
		b = append(b, "null"...)
	}
	return append(b, '}')
}

// appendTime writes ts as a JSON string as timeJSON formats it, or null
// for an unset (optional) timestamp.
func appendTime(b []byte, ts *timestamppb.Timestamp) []byte {
	if ts == nil {
		return append(b, "null"...)
	}
	return appendRequiredTime(b, ts)
}

// appendRequiredTime writes a timestamp the contract always has (such as
// created_at) as a JSON string, as timeJSON formats it: unset, it is the
// epoch, never null.
func appendRequiredTime(b []byte, ts *timestamppb.Timestamp) []byte {
	b = append(b, '"')
	b = appendRFC3339(b, ts)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD, and U+2028/U+2029
// escaped, as encoding/json does.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c >= 0x20:
				b = append(b, c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

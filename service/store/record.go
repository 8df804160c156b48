package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/tokend/tokend/service/token"
)

// A token record, schema version 2 and later: a format byte, then
//
//	user, name          uvarint length + bytes
//	secret hash         32 bytes
//	flags               1 byte: bit 0 set if a previous hash follows
//	previous hash       32 bytes, and its deadline (varint Unix seconds)
//	created, expires, revoked, last used   varint Unix seconds, 0 = never
//	uses, usage batch   uvarint
//	allowed IPs         uvarint count, each: address length (4 or 16),
//	                    address bytes, prefix bits
//
// It decodes with no reflection and few allocations, which matters because
// every authenticated request reads one. Version 1 records were JSON and
// start with '{'; only the migration in Open reads them (decodeJSON).
const recordFormat = 2

const flagPrevHash = 1

func encode(t *token.Token) ([]byte, error) {
	b := make([]byte, 0, 96+len(t.UserID)+len(t.Name)+len(t.AllowedIPs)*18)
	b = append(b, recordFormat)
	b = binary.AppendUvarint(b, uint64(len(t.UserID)))
	b = append(b, t.UserID...)
	b = binary.AppendUvarint(b, uint64(len(t.Name)))
	b = append(b, t.Name...)
	b = append(b, t.SecretHash[:]...)
	if t.PrevSecretHash != ([32]byte{}) {
		b = append(b, flagPrevHash)
		b = append(b, t.PrevSecretHash[:]...)
		b = binary.AppendVarint(b, unix(t.PrevSecretUntil))
	} else {
		b = append(b, 0)
	}
	for _, ts := range []time.Time{t.CreatedAt, t.ExpiresAt, t.RevokedAt, t.LastUsedAt} {
		b = binary.AppendVarint(b, unix(ts))
	}
	b = binary.AppendUvarint(b, t.UsageCount)
	b = binary.AppendUvarint(b, t.UsageBatch)
	// What decode refuses must not be written: it would make the record,
	// and every listing of its owner's tokens, unreadable.
	if len(t.AllowedIPs) > token.MaxAllowedIPs {
		return nil, fmt.Errorf("%w: %d allowed IPs, at most %d", token.ErrInvalid, len(t.AllowedIPs), token.MaxAllowedIPs)
	}
	b = binary.AppendUvarint(b, uint64(len(t.AllowedIPs)))
	for _, p := range t.AllowedIPs {
		if !p.IsValid() {
			return nil, fmt.Errorf("%w: allowed IP %v is not a valid address or range", token.ErrInvalid, p)
		}
		a := p.Addr().AsSlice()
		b = append(b, byte(len(a)))
		b = append(b, a...)
		b = append(b, byte(p.Bits()))
	}
	return b, nil
}

// errTruncated is what a short or malformed binary record decodes to.
var errTruncated = errors.New("truncated record")

// reader walks a binary record.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n uint64) []byte {
	if uint64(len(r.b)) < n {
		r.fail()
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if v := r.bytes(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errTruncated
	}
	r.b = nil
}

// decode parses a stored record. It copies everything out of val, which
// bbolt owns only until the transaction ends.
func decode(id uint64, val []byte) (token.Token, error) {
	r := reader{b: val}
	if r.byte() != recordFormat {
		return token.Token{}, fmt.Errorf("%w: unknown record format", ErrCorrupt)
	}
	t := token.Token{ID: id}
	t.UserID = string(r.bytes(r.uvarint()))
	t.Name = string(r.bytes(r.uvarint()))
	copy(t.SecretHash[:], r.bytes(32))
	if flags := r.byte(); flags&flagPrevHash != 0 {
		copy(t.PrevSecretHash[:], r.bytes(32))
		t.PrevSecretUntil = fromUnix(r.varint())
	}
	t.CreatedAt = fromUnix(r.varint())
	t.ExpiresAt = fromUnix(r.varint())
	t.RevokedAt = fromUnix(r.varint())
	t.LastUsedAt = fromUnix(r.varint())
	t.UsageCount = r.uvarint()
	t.UsageBatch = r.uvarint()
	if n := r.uvarint(); n > 0 && r.err == nil {
		if n > token.MaxAllowedIPs {
			return token.Token{}, fmt.Errorf("%w: %d allowed IPs", ErrCorrupt, n)
		}
		t.AllowedIPs = make(token.AllowedIPs, 0, n)
		for range n {
			a, ok := netip.AddrFromSlice(r.bytes(uint64(r.byte())))
			bits := int(r.byte())
			if r.err != nil || !ok || bits > a.BitLen() {
				return token.Token{}, fmt.Errorf("%w: bad allowed IP", ErrCorrupt)
			}
			t.AllowedIPs = append(t.AllowedIPs, netip.PrefixFrom(a, bits))
		}
	}
	if r.err != nil || len(r.b) != 0 {
		return token.Token{}, fmt.Errorf("%w: token %d: malformed record", ErrCorrupt, id)
	}
	return t, nil
}

// recordV1 is the JSON record of schema version 1.
type recordV1 struct {
	User       string   `json:"user"`
	Name       string   `json:"name"`
	Hash       []byte   `json:"hash"`
	PrevHash   []byte   `json:"prev_hash,omitempty"`
	PrevUntil  int64    `json:"prev_until,omitempty"`
	Created    int64    `json:"created"`
	Expires    int64    `json:"expires,omitempty"`
	Revoked    int64    `json:"revoked,omitempty"`
	LastUsed   int64    `json:"last_used,omitempty"`
	Uses       uint64   `json:"uses,omitempty"`
	UsageBatch uint64   `json:"usage_batch,omitempty"`
	AllowedIPs []string `json:"allowed_ips,omitempty"`
}

func decodeJSON(id uint64, val []byte) (token.Token, error) {
	var r recordV1
	if err := json.Unmarshal(val, &r); err != nil {
		return token.Token{}, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	t := token.Token{
		ID:         id,
		UserID:     r.User,
		Name:       r.Name,
		CreatedAt:  fromUnix(r.Created),
		ExpiresAt:  fromUnix(r.Expires),
		RevokedAt:  fromUnix(r.Revoked),
		LastUsedAt: fromUnix(r.LastUsed),
		UsageCount: r.Uses,
		UsageBatch: r.UsageBatch,
	}
	if len(r.PrevHash) > 0 {
		if len(r.PrevHash) != len(t.PrevSecretHash) {
			return token.Token{}, fmt.Errorf("%w: bad previous secret hash", ErrCorrupt)
		}
		copy(t.PrevSecretHash[:], r.PrevHash)
		t.PrevSecretUntil = fromUnix(r.PrevUntil)
	}
	if len(r.Hash) != len(t.SecretHash) {
		return token.Token{}, fmt.Errorf("%w: bad secret hash", ErrCorrupt)
	}
	copy(t.SecretHash[:], r.Hash)
	for _, s := range r.AllowedIPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return token.Token{}, fmt.Errorf("%w: bad allowed IP %q", ErrCorrupt, s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		t.AllowedIPs = append(t.AllowedIPs, p)
	}
	return t, nil
}

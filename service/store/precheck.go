package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
)

// bbolt's on-disk meta page, as of file format version 2: a 16-byte page
// header, then magic, version, page size, flags, root bucket (root page id
// and sequence), freelist page id, high-water page id, txid and an FNV-64a
// checksum of everything before it.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	pageHeaderSize = 16
	metaSize       = 64
	noFreelist     = ^uint64(0)
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

// precheck refuses a file whose meta pages point past its end. bbolt maps
// the file into memory and follows those page ids without bounds checks,
// so a truncated file makes it fault (SIGBUS), which no recover can catch.
// A missing or empty file is fine: bbolt initialises it.
func precheck(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if size == 0 {
		return nil
	}
	var best *boltMeta
	m0, err0 := readMeta(f, 0)
	if err0 == nil {
		best = &m0
	}
	off := int64(os.Getpagesize())
	if err0 == nil {
		off = int64(m0.pageSize)
	}
	if m1, err1 := readMeta(f, off); err1 == nil && (best == nil || m1.txid > best.txid) {
		best = &m1
	}
	if best == nil {
		return fmt.Errorf("%w: no valid meta page (%v)", ErrCorrupt, err0)
	}
	ps := uint64(best.pageSize)
	if best.pgid == 0 || best.pgid > uint64(size)/ps {
		return fmt.Errorf("%w: file is %d bytes but its meta page needs %d pages of %d bytes; it may be truncated", ErrCorrupt, size, best.pgid, ps)
	}
	if best.root >= best.pgid || best.freelist != noFreelist && best.freelist >= best.pgid {
		return fmt.Errorf("%w: meta page points outside the file", ErrCorrupt)
	}
	return nil
}

func readMeta(r io.ReaderAt, off int64) (boltMeta, error) {
	var buf [pageHeaderSize + metaSize]byte
	if _, err := r.ReadAt(buf[:], off); err != nil {
		return boltMeta{}, fmt.Errorf("read meta page at %d: %w", off, err)
	}
	m := buf[pageHeaderSize:]
	le := binary.LittleEndian
	if le.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("bad magic")
	}
	if le.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, errors.New("unsupported bbolt file version")
	}
	h := fnv.New64a()
	h.Write(m[:56])
	if h.Sum64() != le.Uint64(m[56:]) {
		return boltMeta{}, errors.New("meta checksum mismatch")
	}
	meta := boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		pgid:     le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}
	if meta.pageSize < 512 || meta.pageSize > 1<<20 || meta.pageSize&(meta.pageSize-1) != 0 {
		return boltMeta{}, errors.New("implausible page size")
	}
	return meta, nil
}

//! The per-inode overlay of unsynced file contents: a pure data structure,
//! no FUSE and no file descriptors (the durable "base" content is reached
//! through a callback so that the type can be unit-tested with a `Vec<u8>`).
//!
//! # Model
//!
//! The *base* is the backing file as it was when the overlay was created (its
//! length is [`Overlay::base_len`]); it does not change while the overlay
//! exists because only [`Overlay::flush_plan`] writes to it, and the overlay is
//! discarded right after that. The *logical* file that readers see is:
//!
//! * `size` bytes long ([`Overlay::size`]);
//! * byte `x` comes from the dirty page holding `x` if there is one, otherwise
//!   from the base if `x < visible_base`, otherwise it is zero.
//!
//! `visible_base` is the shortest length the file has had since the overlay
//! was created: a truncation below the base length hides the base's tail for
//! good (extending again exposes zeros, not the old bytes), exactly like a
//! real `ftruncate` would.
//!
//! Dirty pages are 4 KiB images of the *logical* content of that page (they
//! are filled from the base when first touched by a partial write, a
//! read-modify-write), so a page never needs merging on read. Each page also
//! records the hull of the bytes actually written (`lo..hi`), which is what a
//! flush writes back and what [`Overlay::dirty_bytes`] counts. Invariants:
//!
//! * `visible_base <= base_len` and `visible_base <= size`;
//! * no page starts at or beyond `size`;
//! * bytes of a page at or beyond `size` are zero, and `hi <= size - page_start`.
//!
//! Memory is proportional to the bytes written since the last sync (rounded up
//! to pages), never to the file size: an append-and-fsync loop (a WAL) costs
//! O(appended bytes), not a whole-file copy per sync.

use std::collections::BTreeMap;
use std::io;

/// Size of an overlay page.
pub const PAGE_SIZE: usize = 4096;
const PAGE: u64 = PAGE_SIZE as u64;

/// Largest logical file size accepted (the kernel uses `loff_t`, an `i64`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// Reads durable (base) content: fill the whole buffer with the base bytes at
/// the given offset. The overlay only asks for ranges below `visible_base`,
/// which are below `base_len`; an implementation over a real file should
/// zero-fill if the file turns out shorter.
pub trait Base {
    /// Fill `buf` with the base bytes starting at `offset`.
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<F: FnMut(u64, &mut [u8]) -> io::Result<()>> Base for F {
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self(offset, buf)
    }
}

/// A base that must never be read (for operations that need no I/O, and for
/// an empty base).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBase;

impl Base for NoBase {
    fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "overlay bug: base read of {} bytes at {offset} with no base",
            buf.len()
        )))
    }
}

#[derive(Debug, Clone)]
struct Page {
    /// The logical content of the page (`PAGE_SIZE` bytes).
    data: Box<[u8]>,
    /// Hull of the bytes written into this page since the overlay was created.
    lo: usize,
    hi: usize,
}

/// One contiguous write of a [`FlushPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushWrite<'a> {
    /// Offset in the backing file.
    pub offset: u64,
    /// The bytes to write there.
    pub data: &'a [u8],
}

/// How to make an overlay durable, in this order: truncate the backing file to
/// `cut_to` (if set: it hides the base bytes that a truncation removed), write
/// every `writes` entry at its offset, then set the backing length to
/// `final_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushPlan<'a> {
    /// Truncate the backing file to this length first.
    pub cut_to: Option<u64>,
    /// Dirty ranges, ascending, non-overlapping, all below `final_len`.
    pub writes: Vec<FlushWrite<'a>>,
    /// The logical size: the backing file's length after the flush.
    pub final_len: u64,
}

/// Unsynced contents of one file; see the module docs for the model.
#[derive(Debug, Clone)]
pub struct Overlay {
    base_len: u64,
    visible_base: u64,
    size: u64,
    pages: BTreeMap<u64, Page>,
}

impl Overlay {
    /// An overlay over a base (backing file) of `base_len` bytes, with no
    /// changes yet: the logical file equals the base.
    pub fn new(base_len: u64) -> Self {
        Self {
            base_len,
            visible_base: base_len,
            size: base_len,
            pages: BTreeMap::new(),
        }
    }

    /// Length of the base when the overlay was created.
    pub fn base_len(&self) -> u64 {
        self.base_len
    }

    /// Logical size of the file (what `stat` reports).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many leading base bytes are still visible.
    pub fn visible_base(&self) -> u64 {
        self.visible_base
    }

    /// Number of dirty pages held in memory.
    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// True if flushing would not change the base (nothing written, size and
    /// visible base unchanged).
    pub fn is_noop(&self) -> bool {
        self.size == self.base_len && self.visible_base == self.base_len && self.pages.values().all(|p| p.lo >= p.hi)
    }

    /// Bytes written since the overlay was created that a crash would lose
    /// (per page, the span from the first to the last byte written; a pure
    /// truncation or extension counts zero bytes).
    pub fn dirty_bytes(&self) -> u64 {
        self.pages.values().map(|p| p.hi.saturating_sub(p.lo) as u64).sum()
    }

    /// Read up to `len` bytes at `offset` of the logical file (short at EOF,
    /// empty at or past EOF).
    pub fn read(&self, offset: u64, len: usize, base: &mut impl Base) -> io::Result<Vec<u8>> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        let mut out = vec![0u8; (end - offset) as usize];
        let first = offset / PAGE;
        let last = (end - 1) / PAGE;
        let mut pos = offset;
        for (&idx, page) in self.pages.range(first..=last) {
            let pstart = idx * PAGE;
            let seg_start = pstart.max(offset);
            let seg_end = (pstart + PAGE).min(end);
            if pos < seg_start {
                self.fill_from_base(pos, seg_start, offset, &mut out, base)?;
            }
            let src = &page.data[(seg_start - pstart) as usize..(seg_end - pstart) as usize];
            out[(seg_start - offset) as usize..(seg_end - offset) as usize].copy_from_slice(src);
            pos = seg_end;
        }
        if pos < end {
            self.fill_from_base(pos, end, offset, &mut out, base)?;
        }
        Ok(out)
    }

    /// Fill `out[from - out_offset .. to - out_offset]` (a range without dirty
    /// pages) from the visible base; the part past `visible_base` stays zero.
    fn fill_from_base(
        &self,
        from: u64,
        to: u64,
        out_offset: u64,
        out: &mut [u8],
        base: &mut impl Base,
    ) -> io::Result<()> {
        let base_end = to.min(self.visible_base);
        if from < base_end {
            let dst = &mut out[(from - out_offset) as usize..(base_end - out_offset) as usize];
            base.read_base(from, dst)?;
        }
        Ok(())
    }

    /// Write `data` at `offset` of the logical file, growing it if needed (a
    /// write past EOF leaves a zero-filled hole).
    pub fn write(&mut self, offset: u64, data: &[u8], base: &mut impl Base) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        let visible_base = self.visible_base;
        let mut pos = offset;
        while pos < end {
            let idx = pos / PAGE;
            let pstart = idx * PAGE;
            let in_off = (pos - pstart) as usize;
            let chunk = (PAGE - in_off as u64).min(end - pos) as usize;
            let page = match self.pages.entry(idx) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let page = materialize(pstart, in_off, chunk, visible_base, base)?;
                    v.insert(page)
                }
            };
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + chunk];
            page.data[in_off..in_off + chunk].copy_from_slice(src);
            if page.lo >= page.hi {
                page.lo = in_off;
                page.hi = in_off + chunk;
            } else {
                page.lo = page.lo.min(in_off);
                page.hi = page.hi.max(in_off + chunk);
            }
            pos += chunk as u64;
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Set the logical size (`ftruncate`): shrinking drops the bytes past the
    /// new size for good, growing exposes zeros.
    pub fn set_size(&mut self, new_size: u64) -> io::Result<()> {
        if new_size > MAX_FILE_SIZE {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        }
        if new_size < self.size {
            // Pages starting at or past the new size go away entirely.
            let first_gone = new_size.div_ceil(PAGE);
            drop(self.pages.split_off(&first_gone));
            // The page straddling the new size keeps the invariant "zero past
            // size" and its written hull is clipped.
            if !new_size.is_multiple_of(PAGE)
                && let Some(page) = self.pages.get_mut(&(new_size / PAGE))
            {
                let cut = (new_size % PAGE) as usize;
                page.data[cut..].fill(0);
                page.hi = page.hi.min(cut);
                if page.lo >= page.hi {
                    page.lo = 0;
                    page.hi = 0;
                }
            }
            self.visible_base = self.visible_base.min(new_size);
        }
        self.size = new_size;
        Ok(())
    }

    /// Grow the logical size to at least `new_size` (`fallocate` mode 0);
    /// never shrinks.
    pub fn extend_to(&mut self, new_size: u64) -> io::Result<()> {
        if new_size > self.size {
            self.set_size(new_size)?;
        }
        Ok(())
    }

    /// What to do to the backing file to make the logical file durable.
    pub fn flush_plan(&self) -> FlushPlan<'_> {
        let cut_to = (self.visible_base < self.base_len).then_some(self.visible_base);
        let writes = self
            .pages
            .iter()
            .filter_map(|(&idx, page)| {
                let pstart = idx * PAGE;
                let hi = (page.hi as u64).min(self.size.saturating_sub(pstart)) as usize;
                (page.lo < hi).then(|| FlushWrite {
                    offset: pstart + page.lo as u64,
                    data: &page.data[page.lo..hi],
                })
            })
            .collect();
        FlushPlan {
            cut_to,
            writes,
            final_len: self.size,
        }
    }
}

/// A new page image for the page starting at `pstart`, about to receive a
/// write of `chunk` bytes at `in_off`: the logical content, i.e. the visible
/// base bytes and zeros. The base read is skipped when the write covers all of
/// the page's visible base bytes.
fn materialize(pstart: u64, in_off: usize, chunk: usize, visible_base: u64, base: &mut impl Base) -> io::Result<Page> {
    let mut data = vec![0u8; PAGE_SIZE].into_boxed_slice();
    if pstart < visible_base {
        let avail = (visible_base - pstart).min(PAGE) as usize;
        let covered = in_off == 0 && chunk >= avail;
        if !covered {
            base.read_base(pstart, &mut data[..avail])?;
        }
    }
    Ok(Page { data, lo: 0, hi: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base over a byte vector that counts reads.
    struct VecBase<'a> {
        bytes: &'a [u8],
        reads: usize,
    }

    impl<'a> VecBase<'a> {
        fn new(bytes: &'a [u8]) -> Self {
            Self { bytes, reads: 0 }
        }
    }

    impl Base for VecBase<'_> {
        fn read_base(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.reads += 1;
            let off = offset as usize;
            assert!(off + buf.len() <= self.bytes.len(), "base read past base end");
            buf.copy_from_slice(&self.bytes[off..off + buf.len()]);
            Ok(())
        }
    }

    /// Apply a flush plan to a vector, as the file system does to a file.
    fn apply(base: &[u8], plan: &FlushPlan<'_>) -> Vec<u8> {
        let mut file = base.to_vec();
        if let Some(cut) = plan.cut_to {
            file.truncate(cut as usize);
        }
        for w in &plan.writes {
            let end = w.offset as usize + w.data.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[w.offset as usize..end].copy_from_slice(w.data);
        }
        file.resize(plan.final_len as usize, 0);
        file
    }

    fn read_all(ov: &Overlay, base: &[u8]) -> Vec<u8> {
        ov.read(0, ov.size() as usize + 10, &mut VecBase::new(base))
            .expect("read")
    }

    /// A reference model: the logical file as a plain vector.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn new_overlay_reads_the_base_and_is_noop() {
        let base = pattern(10_000, 1);
        let ov = Overlay::new(base.len() as u64);
        assert!(ov.is_noop());
        assert_eq!(ov.dirty_bytes(), 0);
        assert_eq!(read_all(&ov, &base), base);
        assert_eq!(apply(&base, &ov.flush_plan()), base);
        assert!(ov.flush_plan().writes.is_empty());
    }

    #[test]
    fn write_across_page_boundaries_merges_with_base() {
        let base = pattern(3 * PAGE_SIZE, 7);
        let mut ov = Overlay::new(base.len() as u64);
        let data = vec![0xAB; 5000];
        let off = PAGE_SIZE as u64 - 100; // spans pages 0, 1 and 2
        let mut b = VecBase::new(&base);
        ov.write(off, &data, &mut b).expect("write");
        // page 0 and page 2 are partial (read from base), page 1 is covered.
        assert_eq!(b.reads, 2);
        assert_eq!(ov.page_count(), 3);
        assert_eq!(ov.size(), base.len() as u64);
        assert_eq!(ov.dirty_bytes(), 5000);

        let mut expect = base.clone();
        expect[off as usize..off as usize + 5000].copy_from_slice(&data);
        assert_eq!(read_all(&ov, &base), expect);
        // A read in the middle of things.
        let got = ov.read(off - 10, 30, &mut VecBase::new(&base)).expect("read");
        assert_eq!(got, expect[off as usize - 10..off as usize + 20]);

        let plan = ov.flush_plan();
        assert_eq!(plan.cut_to, None);
        assert_eq!(plan.final_len, base.len() as u64);
        let total: usize = plan.writes.iter().map(|w| w.data.len()).sum();
        assert_eq!(total, 5000, "only written bytes are flushed");
        assert_eq!(apply(&base, &plan), expect);
    }

    #[test]
    fn appends_beyond_eof_need_no_base_reads_and_count_exactly() {
        let base = pattern(1000, 3);
        let mut ov = Overlay::new(1000);
        let mut b = VecBase::new(&base);
        // Appending at EOF: the page holds base bytes 0..1000, read once.
        ov.write(1000, &[1; 100], &mut b).expect("write");
        assert_eq!(b.reads, 1);
        ov.write(1100, &[2; 100], &mut b).expect("write");
        assert_eq!(b.reads, 1, "page already materialized");
        // A new page past the base: no read.
        ov.write(8192, &[3; 10], &mut b).expect("write");
        assert_eq!(b.reads, 1);
        assert_eq!(ov.size(), 8202);
        assert_eq!(ov.dirty_bytes(), 210);

        let mut expect = base.clone();
        expect.extend_from_slice(&[1; 100]);
        expect.extend_from_slice(&[2; 100]);
        expect.resize(8192, 0);
        expect.extend_from_slice(&[3; 10]);
        assert_eq!(read_all(&ov, &base), expect);
        assert_eq!(apply(&base, &ov.flush_plan()), expect);
    }

    #[test]
    fn sparse_write_far_beyond_eof_leaves_a_zero_hole() {
        let base = b"hello".to_vec();
        let mut ov = Overlay::new(5);
        ov.write(1 << 20, b"tail", &mut VecBase::new(&base)).expect("write");
        assert_eq!(ov.size(), (1 << 20) + 4);
        assert_eq!(ov.page_count(), 1);
        let got = read_all(&ov, &base);
        assert_eq!(&got[..5], b"hello");
        assert!(got[5..1 << 20].iter().all(|&b| b == 0));
        assert_eq!(&got[1 << 20..], b"tail");
        assert_eq!(apply(&base, &ov.flush_plan()), got);
    }

    #[test]
    fn truncate_down_hides_base_tail_even_after_extending_again() {
        let base = pattern(10_000, 9);
        let mut ov = Overlay::new(10_000);
        ov.set_size(100).expect("truncate");
        assert_eq!(ov.size(), 100);
        assert_eq!(read_all(&ov, &base), base[..100]);
        ov.set_size(10_000).expect("extend");
        let got = read_all(&ov, &base);
        assert_eq!(got[..100], base[..100]);
        assert!(got[100..].iter().all(|&b| b == 0), "old bytes must not reappear");
        assert_eq!(ov.dirty_bytes(), 0);
        assert!(!ov.is_noop());

        let plan = ov.flush_plan();
        assert_eq!(plan.cut_to, Some(100));
        assert_eq!(apply(&base, &plan), got);
    }

    #[test]
    fn truncate_down_inside_a_dirty_page_zeroes_its_tail() {
        let base = Vec::new();
        let mut ov = Overlay::new(0);
        ov.write(0, &[7; 3000], &mut NoBase).expect("write");
        ov.set_size(1000).expect("truncate");
        assert_eq!(ov.dirty_bytes(), 1000);
        ov.set_size(3000).expect("extend");
        let got = read_all(&ov, &base);
        assert_eq!(got[..1000], [7; 1000]);
        assert!(got[1000..].iter().all(|&b| b == 0));
        assert_eq!(apply(&base, &ov.flush_plan()), got);
    }

    #[test]
    fn truncate_to_zero_drops_pages_and_writes_then_land_on_zeros() {
        let base = pattern(9000, 5);
        let mut ov = Overlay::new(9000);
        ov.write(10, b"abc", &mut VecBase::new(&base)).expect("write");
        ov.set_size(0).expect("truncate");
        assert_eq!(ov.page_count(), 0);
        assert_eq!(ov.size(), 0);
        assert!(read_all(&ov, &base).is_empty());
        // Rewriting after O_TRUNC: no base read is allowed (base is hidden).
        ov.write(2, b"xy", &mut NoBase).expect("write");
        assert_eq!(read_all(&ov, &base), b"\0\0xy");
        let plan = ov.flush_plan();
        assert_eq!(plan.cut_to, Some(0));
        assert_eq!(apply(&base, &plan), b"\0\0xy");
    }

    #[test]
    fn truncate_down_partially_hides_a_page_then_overwrite_reads_correct_base() {
        let base = pattern(5000, 2);
        let mut ov = Overlay::new(5000);
        ov.set_size(4100).expect("truncate");
        // Page 1 is materialized from base bytes 4096..4100 only.
        let mut b = VecBase::new(&base);
        ov.write(4200, b"zz", &mut b).expect("write");
        let got = read_all(&ov, &base);
        let mut expect = base[..4100].to_vec();
        expect.resize(4200, 0);
        expect.extend_from_slice(b"zz");
        assert_eq!(got, expect);
        assert_eq!(apply(&base, &ov.flush_plan()), expect);
    }

    #[test]
    fn extend_only_grows() {
        let base = pattern(100, 4);
        let mut ov = Overlay::new(100);
        ov.extend_to(50).expect("extend");
        assert_eq!(ov.size(), 100);
        assert!(ov.is_noop());
        ov.extend_to(5000).expect("extend");
        assert_eq!(ov.size(), 5000);
        let got = read_all(&ov, &base);
        assert_eq!(got[..100], base[..]);
        assert!(got[100..].iter().all(|&b| b == 0));
        let plan = ov.flush_plan();
        assert_eq!(plan.cut_to, None);
        assert!(plan.writes.is_empty());
        assert_eq!(apply(&base, &plan), got);
    }

    #[test]
    fn reads_past_eof_and_empty_writes() {
        let base = pattern(10, 1);
        let mut ov = Overlay::new(10);
        assert!(ov.read(10, 5, &mut NoBase).expect("read").is_empty());
        assert!(ov.read(100, 5, &mut NoBase).expect("read").is_empty());
        assert_eq!(ov.read(8, 100, &mut VecBase::new(&base)).expect("read"), base[8..]);
        ov.write(500, &[], &mut NoBase).expect("empty write");
        assert_eq!(ov.size(), 10);
        assert!(ov.is_noop());
    }

    #[test]
    fn oversized_offsets_are_efbig() {
        let mut ov = Overlay::new(0);
        let err = ov.write(MAX_FILE_SIZE, b"x", &mut NoBase).expect_err("too big");
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
        let err = ov.set_size(MAX_FILE_SIZE + 1).expect_err("too big");
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG));
    }

    #[test]
    fn base_errors_propagate() {
        let mut ov = Overlay::new(100);
        let err = ov.write(10, b"x", &mut NoBase).expect_err("needs base");
        assert!(err.to_string().contains("no base"));
        assert_eq!(ov.page_count(), 0, "failed write leaves no page");
        assert!(ov.read(0, 10, &mut NoBase).is_err());
    }

    #[test]
    fn dropping_the_overlay_is_the_crash() {
        // The crash is "forget the overlay": the base is untouched by every
        // operation, so what remains is exactly the last synced content.
        let base = pattern(4096 * 2, 8);
        let before = base.clone();
        let mut ov = Overlay::new(base.len() as u64);
        ov.write(0, &[1; 9000], &mut VecBase::new(&base)).expect("write");
        ov.set_size(3).expect("truncate");
        drop(ov);
        assert_eq!(base, before);
    }

    /// Random operations against a `Vec<u8>` model, checking reads and the
    /// flush result after every step.
    #[test]
    fn randomized_against_a_vector_model() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let base = pattern(next(20_000) as usize, round as u8);
            let mut model = base.clone();
            let mut ov = Overlay::new(base.len() as u64);
            for _ in 0..30 {
                match next(4) {
                    0 | 1 => {
                        let off = next(24_000) as usize;
                        let len = next(9000) as usize + 1;
                        let data = pattern(len, next(255) as u8);
                        ov.write(off as u64, &data, &mut VecBase::new(&base)).expect("write");
                        if model.len() < off + len {
                            model.resize(off + len, 0);
                        }
                        model[off..off + len].copy_from_slice(&data);
                    }
                    2 => {
                        let size = next(24_000) as usize;
                        ov.set_size(size as u64).expect("truncate");
                        model.resize(size, 0);
                    }
                    _ => {
                        let size = next(24_000) as usize;
                        ov.extend_to(size as u64).expect("extend");
                        if model.len() < size {
                            model.resize(size, 0);
                        }
                    }
                }
                assert_eq!(ov.size(), model.len() as u64);
                let off = next(model.len() as u64 + 1) as usize;
                let len = next(10_000) as usize;
                let got = ov.read(off as u64, len, &mut VecBase::new(&base)).expect("read");
                let end = (off + len).min(model.len());
                assert_eq!(got, model[off.min(end)..end]);
            }
            assert_eq!(read_all(&ov, &base), model);
            assert_eq!(apply(&base, &ov.flush_plan()), model);
        }
    }
}

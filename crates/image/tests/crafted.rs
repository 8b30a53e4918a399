//! Hostile qcow2 images (issue #18): each is a valid image built byte by byte, then one field
//! patched. vmshift must refuse it with one line naming the offset or the field and value,
//! within a few seconds, and without allocating from a size the file claims.
//!
//! Who reads what: `header.rs` parses the header, the backing name and the extensions;
//! `integrity.rs` walks the L1, L2 and refcount tables (bounds, overlaps, double mappings)
//! before imago ever opens the image; imago reads the tables again to copy, and
//! `qemu-img check` counts refcounts last.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use vmshift_core::extent::ExtentKind;
use vmshift_image::{inspect, ImageReader, InspectOptions};

/// Records the largest single allocation, so a test can tell that nothing was sized from an
/// untrusted count (a 2^31-entry L1 table would be a 16 GiB buffer).
struct LargestAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only records the size asked for.
unsafe impl GlobalAlloc for LargestAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds alloc's contract; forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (that is, from System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAlloc = LargestAlloc;

/// No test here needs a buffer anywhere near this.
const ALLOCATION_LIMIT: usize = 64 << 20;

const C: u64 = 0x10000; // 64 KiB clusters (cluster_bits 16)
const REFTABLE: u64 = C;
const REFBLOCK: u64 = 2 * C;
const L1: u64 = 3 * C;
const L2: u64 = 4 * C;
const DATA0: u64 = 5 * C;
const DATA1: u64 = 6 * C;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

/// A valid qcow2 v3 image of 4 MiB virtual size with 64 KiB clusters and two data
/// clusters (guest 0x0 and 0x10000), laid out one cluster each: header, refcount table,
/// refcount block, L1, L2, data, data.
fn valid_image() -> Vec<u8> {
    let mut b = vec![0u8; at(7 * C)];
    b[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut b, 4, 3); // version
    put32(&mut b, 20, 16); // cluster_bits
    put64(&mut b, 24, 4 << 20); // size
    put32(&mut b, 36, 1); // l1_size
    put64(&mut b, 40, L1);
    put64(&mut b, 48, REFTABLE);
    put32(&mut b, 56, 1); // refcount_table_clusters
    put32(&mut b, 96, 4); // refcount_order: 16-bit refcounts
    put32(&mut b, 100, 112); // header_length; extensions end at 112 (type 0)
    put64(&mut b, REFTABLE, REFBLOCK);
    for cluster in 0..7 {
        put16(&mut b, REFBLOCK + 2 * cluster, 1);
    }
    put64(&mut b, L1, L2 | COPIED);
    put64(&mut b, L2, DATA0 | COPIED);
    put64(&mut b, L2 + 8, DATA1 | COPIED);
    b[at(DATA0)..at(DATA1)].fill(0xa5);
    b[at(DATA1)..].fill(0x5a);
    b
}

/// `off` as an index into the image buffer.
fn at(off: u64) -> usize {
    usize::try_from(off).expect("test offsets fit in memory")
}

fn put16(b: &mut [u8], off: u64, v: u16) {
    let o = at(off);
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}

fn put32(b: &mut [u8], off: u64, v: u32) {
    let o = at(off);
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}

fn put64(b: &mut [u8], off: u64, v: u64) {
    let o = at(off);
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

/// Writes `bytes` as `NAME.qcow2` in a fresh directory (kept alive by the returned guard).
fn write_image(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.qcow2");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Inspects `path` (block status walked, as `check` and `migrate` do) on its own thread,
/// and reads what it accepted as the copy would: the refusals as one-line strings, or a
/// panic when it takes longer than a few seconds.
fn refusals(path: &Path) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let opts = InspectOptions {
            walk_extents: true,
            ..Default::default()
        };
        let inspection = inspect(&p, &opts);
        if let (true, Some(chain)) = (inspection.facts.problems.is_empty(), &inspection.chain) {
            read_data(chain);
        }
        let _ = tx.send(inspection);
    });
    let inspection = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("inspect did not finish within 10 s");
    assert!(
        LARGEST.load(Ordering::Relaxed) < ALLOCATION_LIMIT,
        "an allocation of {} bytes was made",
        LARGEST.load(Ordering::Relaxed)
    );
    inspection
        .facts
        .problems
        .iter()
        .map(|p| p.one_line())
        .collect()
}

/// Reads every data extent of an accepted image through imago, as the copy engine does
/// (at most 64 MiB: the walk let no two guest clusters share a host cluster, so data
/// is bounded by the file). Read errors are fine; a panic or a hang is not.
fn read_data(chain: &vmshift_image::Chain) {
    let Ok(reader) = ImageReader::open(chain) else {
        return;
    };
    let Ok(extents) = reader.extents(0, reader.virtual_size(), false) else {
        return;
    };
    let mut buf = vec![0u8; at(C)];
    let mut budget = 64u64 << 20;
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        let mut pos = e.offset;
        while pos < e.offset + e.len && budget > 0 {
            let n = (e.offset + e.len - pos).min(C);
            if reader.read_at(&mut buf[..at(n)], pos).is_err() {
                return;
            }
            pos += n;
            budget = budget.saturating_sub(n);
        }
    }
}

/// Asserts that the image is refused with exactly one problem, on one line, containing
/// every needle.
fn assert_refused(bytes: &[u8], needles: &[&str]) -> String {
    let (_dir, path) = write_image(bytes);
    let problems = refusals(&path);
    assert_eq!(problems.len(), 1, "expected one refusal, got {problems:?}");
    let line = &problems[0];
    assert!(
        !line.contains('\n') && !line.contains('\0'),
        "not one line: {line:?}"
    );
    for n in needles {
        assert!(line.contains(n), "{n:?} missing from {line:?}");
    }
    line.clone()
}

#[test]
fn the_valid_crafted_image_is_accepted_with_its_two_data_clusters() {
    let (_dir, path) = write_image(&valid_image());
    let opts = InspectOptions {
        walk_extents: true,
        ..Default::default()
    };
    let i = inspect(&path, &opts);
    assert!(i.facts.problems.is_empty(), "{:?}", i.facts.problems);
    // qemu-img check ran and found nothing to say: the layout is exactly right.
    assert!(i.facts.notes.is_empty(), "{:?}", i.facts.notes);
    assert_eq!(i.facts.data_bytes, 2 * C);
}

#[test]
fn an_l1_entry_pointing_at_offset_zero_the_header_is_refused() {
    // Offset 0 alone means "unallocated"; with the copied flag it claims the header.
    let mut b = valid_image();
    put64(&mut b, L1, COPIED);
    assert_refused(
        &b,
        &["L1 entry 0 is 0x8000000000000000: an L2 table at offset 0x0, the header"],
    );
}

#[test]
fn an_l2_table_inside_the_header_cluster_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L1, 0x200 | COPIED);
    assert_refused(&b, &["L2 table 0 at 0x200", "misaligned"]);
}

#[test]
fn an_l2_table_on_the_l1_table_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L1, L1 | COPIED);
    assert_refused(&b, &["L2 table 0 at 0x30000 overlaps the L1 table"]);
}

#[test]
fn an_l2_table_on_the_refcount_table_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L1, REFTABLE | COPIED);
    assert_refused(&b, &["L2 table 0 at 0x10000 overlaps the refcount table"]);
}

#[test]
fn two_l1_entries_sharing_one_l2_table_are_refused() {
    let mut b = valid_image();
    put32(&mut b, 36, 2); // l1_size
    put64(&mut b, L1 + 8, L2 | COPIED);
    assert_refused(&b, &["L2 table 1 at 0x40000 overlaps L2 table 0"]);
}

#[test]
fn a_data_cluster_at_offset_zero_the_header_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L2, COPIED);
    assert_refused(
        &b,
        &["guest offset 0x0", "points at offset 0x0, the header"],
    );
}

#[test]
fn a_compressed_cluster_inside_the_header_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L2, COMPRESSED | 0x48);
    assert_refused(&b, &["compressed cluster", "at 0x48 overlaps the header"]);
}

#[test]
fn a_data_cluster_on_the_l1_table_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L2 + 8, L1 | COPIED);
    assert_refused(
        &b,
        &["guest offset 0x10000 at 0x30000 overlaps the L1 table"],
    );
}

#[test]
fn a_data_cluster_on_the_refcount_table_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L2, REFTABLE | COPIED);
    assert_refused(&b, &["at 0x10000 overlaps the refcount table"]);
}

#[test]
fn a_data_cluster_on_its_own_l2_table_is_refused() {
    let mut b = valid_image();
    put64(&mut b, L2, L2 | COPIED);
    assert_refused(&b, &["at 0x40000 overlaps L2 table 0"]);
}

#[test]
fn a_data_cluster_mapped_twice_overflowing_a_one_bit_refcount_is_refused() {
    // refcount_bits=1: the shared cluster would need refcount 2, which cannot be stored;
    // qemu-img check calls it "overflow". Refused by the walk, naming the cluster.
    let mut b = valid_image();
    put32(&mut b, 96, 0); // refcount_order 0
    b[at(REFBLOCK)..at(REFBLOCK) + 16].fill(0);
    b[at(REFBLOCK)] = 0x3f; // clusters 0-5 in use (bit i = cluster i)
    put64(&mut b, L2 + 8, DATA0 | COPIED);
    assert_refused(
        &b,
        &["data cluster at 0x50000 is mapped again by guest offset 0x10000"],
    );
}

#[test]
fn a_refcount_table_size_that_overflows_is_refused_before_reading_it() {
    let mut b = valid_image();
    put32(&mut b, 56, u32::MAX);
    assert_refused(&b, &["refcount_table_clusters at offset 0x38: 0xffffffff"]);
}

#[test]
fn an_l1_size_of_2_pow_31_is_refused_before_allocating() {
    let mut b = valid_image();
    put32(&mut b, 36, 1 << 31);
    let (_dir, path) = write_image(&b);
    // Sparse room for the whole claimed table: only the header's limit can stop it.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(L1 + (8 << 31))
        .unwrap();
    let problems = refusals(&path);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("invalid header field l1_size at offset 0x24: 0x80000000"),
        "{problems:?}"
    );
}

/// The valid image with `entries` L1 entries (at 0x70000, 512 MiB of guest each), the
/// first naming the real L2 table, every other one its own L2 table in a hole past the
/// end of what is written: valid by the spec, and read as zeroes by every reader.
fn with_sparse_l2_tables(entries: u64) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let big_l1 = 7 * C;
    let tables = big_l1 + (entries * 8).next_multiple_of(C);
    let mut b = valid_image();
    put64(&mut b, 24, entries * (C / 8) * C); // size: every entry needed
    put32(&mut b, 36, u32::try_from(entries).unwrap());
    put64(&mut b, 40, big_l1);
    let mut l1 = vec![0u8; at(entries * 8)];
    put64(&mut l1, 0, L2 | COPIED);
    for i in 1..entries {
        put64(&mut l1, i * 8, (tables + i * C) | COPIED);
    }
    b.extend_from_slice(&l1);
    let (dir, path) = write_image(&b);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(tables + entries * C)
        .unwrap();
    (dir, path, b)
}

/// The walk alone (no qemu-img) on `path` whose first bytes are `head`, timed.
fn walk(path: &Path, head: &[u8]) -> (vmshift_image::integrity::Integrity, Duration) {
    let started = std::time::Instant::now();
    let h = vmshift_image::header::Qcow2Header::parse(&head[..at(C)]).unwrap();
    let len = std::fs::metadata(path).unwrap().len();
    let walked = vmshift_image::integrity::check_tables(path, &h, len);
    (walked, started.elapsed())
}

#[test]
fn l2_tables_in_holes_of_the_file_are_not_read_by_the_walk() {
    // 16384 tables, 1 GiB of them in a hole: accepted (a sparse copy of a preallocated
    // image looks like this), and walked without reading the hole.
    let (_dir, path, head) = with_sparse_l2_tables(1 << 14);
    let (walked, took) = walk(&path, &head);
    assert!(walked.errors.is_empty(), "{:?}", walked.errors);
    assert_eq!(walked.mapped_clusters, 2);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_million_l2_tables_in_a_64_gib_hole_are_refused_quickly() {
    // Every reader would read 64 GiB of zeroes: imago's block status took minutes, and so
    // did qemu-img check, now stopped at its time limit.
    let (_dir, path, head) = with_sparse_l2_tables(1 << 20);
    let (walked, took) = walk(&path, &head);
    assert_eq!(walked.errors.len(), 1, "{:?}", walked.errors);
    let e = &walked.errors[0];
    assert!(
        e.starts_with(
            "its L1 table names more than 4 GiB of L2 tables that lie in holes of the file"
        ),
        "{e}"
    );
    assert!(e.contains("L2 table 65537 at 0x100880000"), "{e}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let started = std::time::Instant::now();
    let checked = vmshift_image::qemu_img::check_within(&path, Duration::from_secs(2));
    assert_eq!(
        checked,
        Err("qemu-img check did not finish within 2s".to_string())
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // And through inspect, as check and migrate see it: one line, in bounded time.
    let problems = refusals(&path);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("lie in holes of the file"),
        "{problems:?}"
    );
}

#[test]
fn a_virtual_size_of_2_pow_63_is_refused_before_allocating() {
    let mut b = valid_image();
    put64(&mut b, 24, 1 << 63);
    assert_refused(
        &b,
        &["invalid header field size at offset 0x18: 0x8000000000000000"],
    );
}

/// The valid image with backing file `name` recorded at 0x1000 (format qcow2 recorded).
fn with_backing_name(name: &[u8]) -> Vec<u8> {
    let mut b = valid_image();
    put64(&mut b, 8, 0x1000);
    put32(&mut b, 16, u32::try_from(name.len()).unwrap());
    b[0x1000..0x1000 + name.len()].copy_from_slice(name);
    put32(&mut b, 112, 0xe279_2aca);
    put32(&mut b, 116, 5);
    b[120..125].copy_from_slice(b"qcow2");
    b
}

#[test]
fn a_backing_name_holding_a_nul_is_refused() {
    let line = assert_refused(
        &with_backing_name(b"base.qcow2\0/etc/shadow"),
        &["backing file name at offset 0x1000 holds a NUL byte"],
    );
    assert!(line.contains(r#""base.qcow2\0/etc/shadow""#), "{line}");
}

#[test]
fn a_backing_name_holding_a_newline_is_refused_on_one_line() {
    assert_refused(
        &with_backing_name(b"base.qcow2\nsecond line"),
        &[
            "backing file name at offset 0x1000 holds a control character",
            r#"\n"#,
        ],
    );
}

#[test]
fn a_backing_name_that_is_not_utf8_is_refused() {
    assert_refused(
        &with_backing_name(b"base\xff.qcow2"),
        &["backing file name at offset 0x1000 holds bytes that are not UTF-8"],
    );
}

#[test]
fn a_json_backing_name_is_refused() {
    assert_refused(
        &with_backing_name(br#"json:{"driver":"file","filename":"/etc/shadow"}"#),
        &["json: specification"],
    );
}

#[test]
fn a_4_kib_backing_name_is_refused() {
    let mut b = with_backing_name(&[b'a'; 1000]);
    put32(&mut b, 16, 4096);
    assert_refused(
        &b,
        &["invalid header field backing_file_size at offset 0x10: 0x1000"],
    );
}

#[test]
fn a_header_extension_running_past_the_first_cluster_is_refused() {
    let mut b = valid_image();
    put32(&mut b, 112, 0xe279_2aca);
    put32(&mut b, 116, 0x1_0000);
    assert_refused(
        &b,
        &["header extension 0xe2792aca at offset 0x70 has length 0x10000, running past 0x10000"],
    );
}

#[test]
fn a_header_extension_running_past_the_end_of_the_file_is_refused() {
    let mut b = valid_image();
    put32(&mut b, 112, 0x1234_5678);
    put32(&mut b, 116, 0x200);
    b.truncate(0x100);
    assert_refused(&b, &["header is cut short at offset 0x78"]);
}

#[test]
fn cluster_bits_out_of_range_are_refused() {
    for (bits, value) in [(8u32, "0x8"), (22, "0x16"), (u32::MAX, "0xffffffff")] {
        let mut b = valid_image();
        put32(&mut b, 20, bits);
        assert_refused(
            &b,
            &[&format!(
                "invalid header field cluster_bits at offset 0x14: {value}"
            )],
        );
    }
}

#[test]
fn an_unaligned_l1_table_offset_is_refused() {
    let mut b = valid_image();
    put64(&mut b, 40, L1 + 8);
    assert_refused(
        &b,
        &["invalid header field l1_table_offset at offset 0x28: 0x30008"],
    );
}

/// Offsets worth corrupting: every header field up to the extensions, the first refcount
/// table entry, the start of the refcount block, the L1 entry and the first L2 entries.
const PATCH_OFFSETS: [u64; 25] = [
    4,
    8,
    16,
    20,
    24,
    32,
    36,
    40,
    48,
    56,
    60,
    72,
    96,
    100,
    112,
    116,
    REFTABLE,
    REFBLOCK,
    L1,
    L1 + 8,
    L2,
    L2 + 8,
    L2 + 16,
    L2 + 24,
    L2 + 0x1000,
];

/// Values a crafted field is likely to hold: offsets of clusters (with flags), small
/// counts, extremes, and anything at all.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = u64> {
    use proptest::prelude::*;
    prop_oneof![
        (0..10u64, 0..4u64).prop_map(|(c, f)| (c * C) | (f << 62)),
        (0..10u64).prop_map(|c| c * C + 0x200),
        (0..64u32).prop_map(|b| 1u64 << b),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever a few fields hold, inspecting the image (table walk, imago's block status,
    /// qemu-img check) ends within the time limit, allocates nothing huge and never panics;
    /// whatever it refuses, it says in one line.
    #[test]
    fn patched_fields_never_panic_hang_or_allocate(
        patches in proptest::collection::vec(
            (0..PATCH_OFFSETS.len(), proptest::bool::ANY, hostile_value()),
            1..4,
        )
    ) {
        let mut b = valid_image();
        for (i, wide, v) in patches {
            let off = PATCH_OFFSETS[i];
            if wide {
                put64(&mut b, off, v);
            } else {
                put32(&mut b, off, u32::try_from(v & 0xffff_ffff).unwrap());
            }
        }
        let (_dir, path) = write_image(&b);
        for line in refusals(&path) {
            proptest::prop_assert!(!line.contains('\n'), "{line:?}");
        }
    }
}

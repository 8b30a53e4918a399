//! Capacity math: how many bytes a target image will occupy.
//!
//! The qcow2 formulas follow QEMU's `qcow2_calc_prealloc_size()` and
//! `qcow2_refcount_metadata_size()` (block/qcow2.c, block/qcow2-refcount.c), so that our
//! numbers match `qemu-img measure`.

/// Bytes a qcow2 image needs for `data_bytes` of guest data spread over `data_extents`
/// extents at `virtual_size`, with `cluster_size` clusters and 16-bit refcounts: header,
/// L1 table, the L2 tables the data touches, refcount structures and the data clusters.
///
/// For images whose data fits under one L2 table this equals the `required size` of
/// `qemu-img measure -O qcow2`. For large sparse images it is much smaller than QEMU's
/// figure, which counts every L2 table of the virtual size (3.3 GB for 20 TiB) although
/// only the tables that map data are ever allocated.
pub fn qcow2_required_bytes(
    virtual_size: u64,
    data_bytes: u64,
    data_extents: u64,
    cluster_size: u64,
) -> u64 {
    const ENTRY: u64 = 8;
    let aligned = virtual_size.div_ceil(cluster_size) * cluster_size;
    let data = data_bytes.min(aligned);
    let l2_coverage = cluster_size / ENTRY * cluster_size;
    let all_l2 = aligned.div_ceil(l2_coverage);
    // Each extent may straddle one more table boundary than its length alone implies.
    let l2_tables = if data == 0 {
        0
    } else {
        all_l2.min(data.div_ceil(l2_coverage) + data_extents.max(1))
    };
    let l1_bytes = (all_l2 * ENTRY).div_ceil(cluster_size) * cluster_size;
    let mut meta = cluster_size + l1_bytes + l2_tables * cluster_size;
    meta += refcount_metadata_bytes((meta + data) / cluster_size, cluster_size, 4);
    meta + data
}

/// Bytes a fully allocated qcow2 image of `virtual_size` takes (metadata plus every cluster),
/// as QEMU's `qcow2_calc_prealloc_size()` computes it.
pub fn qcow2_fully_allocated_bytes(virtual_size: u64, cluster_size: u64) -> u64 {
    const L2E: u64 = 8;
    const L1E: u64 = 8;
    let aligned = virtual_size.div_ceil(cluster_size) * cluster_size;
    let mut meta = cluster_size; // header
    let nl2e = (aligned / cluster_size).div_ceil(cluster_size / L2E) * (cluster_size / L2E);
    meta += nl2e * L2E;
    let nl1e = (nl2e * L2E / cluster_size).div_ceil(cluster_size / L1E) * (cluster_size / L1E);
    meta += nl1e * L1E;
    meta += refcount_metadata_bytes((meta + aligned) / cluster_size, cluster_size, 4);
    meta + aligned
}

/// Refcount table + refcount block bytes needed to cover `clusters` clusters
/// (`refcount_order` 4 = 16-bit refcounts), iterated to a fixed point like QEMU.
pub fn refcount_metadata_bytes(clusters: u64, cluster_size: u64, refcount_order: u32) -> u64 {
    let per_table_cluster = cluster_size / 8;
    let per_block = cluster_size * 8 / (1u64 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last {
            return (blocks + table) * cluster_size;
        }
    }
}

/// Rounds `bytes` up to a multiple of `align` (a power of two or any non-zero value).
pub fn round_up(bytes: u64, align: u64) -> u64 {
    bytes.div_ceil(align) * align
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_qemu_img_measure_for_the_compressed_case_c12() {
        // qemu-img measure -O qcow2 compressed.qcow2: required size 8716288
        assert_eq!(qcow2_required_bytes(8 << 20, 8 << 20, 1, 65536), 8_716_288);
    }

    #[test]
    fn matches_qemu_img_measure_for_the_out_of_space_case_c22() {
        // 32 MiB virtual, 12 MiB data: required size 12910592
        assert_eq!(
            qcow2_required_bytes(32 << 20, 12 << 20, 1, 65536),
            12_910_592
        );
    }

    #[test]
    fn huge_sparse_images_need_little() {
        let need = qcow2_required_bytes(20 << 40, 2 << 20, 2, 65536);
        assert!(need < 64 << 20, "{need}");
    }

    #[test]
    fn empty_image_is_header_and_tables_only() {
        assert_eq!(qcow2_required_bytes(0, 0, 0, 65536), 65536 * 3);
        assert_eq!(qcow2_fully_allocated_bytes(8 << 20, 65536), 8_716_288);
    }
}

//! Tests across the journal's record kinds: a whole job's life, and damage to the file.

use crate::chunks::tests::chunk;
use crate::jobs::tests::job;
use crate::{ChunkRecord, Journal};

#[test]
fn jobs_phases_and_chunks_round_trip_through_a_real_file_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let mut j = Journal::open(&path).unwrap();
    j.create_job(&job("01aa-1")).unwrap();
    j.phase_started("01aa-1", 1, "check").unwrap();
    j.phase_started("01aa-1", 1, "copy").unwrap();
    j.record_chunks("01aa-1", &[chunk(0, 1), chunk(3, 1)])
        .unwrap();
    j.record_chunks("01aa-1", &[chunk(5, 1)]).unwrap();
    j.set_status("01aa-1", "failed", Some("boom")).unwrap();
    j.set_partial_state("01aa-1", "kept").unwrap();
    drop(j);

    let j = Journal::open(&path).unwrap();
    let mode: String = j
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let r = j.job("01aa").unwrap();
    assert_eq!(r.status, "failed");
    assert_eq!(r.error.as_deref(), Some("boom"));
    assert_eq!(r.partial_state, "kept");
    assert_eq!(r.done_bytes, 3 * (8 << 20));
    assert_eq!(r.options["format"], "raw");
    assert_eq!(r.pid, Some(std::process::id()));
    let c = j.chunks("01aa-1").unwrap();
    assert_eq!(c.iter().map(|c| c.index).collect::<Vec<_>>(), vec![0, 3, 5]);
    assert_eq!(c[1], chunk(3, 1));
    let ph = j.phases("01aa-1").unwrap();
    assert_eq!(ph.len(), 2);
    assert_eq!(ph[0].phase, "check");
    assert!(ph[0].ended_at.is_some());
    assert!(ph[1].ended_at.is_none());
    assert_eq!(j.start_run("01aa-1").unwrap(), 2);
    j.clear_chunks("01aa-1").unwrap();
    assert_eq!(j.job("01aa-1").unwrap().done_bytes, 0);
    assert_eq!(j.job("01aa-1").unwrap().status, "running");
}

#[test]
fn a_truncated_journal_fails_clearly_or_keeps_the_readable_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    {
        let mut j = Journal::open(&path).unwrap();
        for i in 0..40 {
            let id = format!("job-{i:03}");
            j.create_job(&job(&id)).unwrap();
            let chunks: Vec<ChunkRecord> = (0..50).map(|c| chunk(c, 1)).collect();
            j.record_chunks(&id, &chunks).unwrap();
        }
        // Fold the WAL into the main file so truncating it loses real pages.
        j.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    // Never a panic: either a clear corruption error naming the file, or the jobs that
    // are still readable plus a description of what is not.
    match Journal::open_read_only(&path) {
        Err(e) => assert!(e.to_string().contains(&path.display().to_string())),
        Ok(j) => {
            assert!(j.integrity_check().is_err());
            match j.jobs() {
                Ok((jobs, problems)) => {
                    assert!(jobs.len() + problems.len() > 0);
                    for p in &problems {
                        assert!(p.contains("journal.sqlite"), "{p}");
                    }
                }
                Err(e) => assert!(e.to_string().contains("journal.sqlite"), "{e}"),
            }
        }
    }
}

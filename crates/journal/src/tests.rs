//! Tests across the journal's record kinds: a whole job's life, and damage to the file.

use crate::chunks::tests::chunk;
use crate::jobs::tests::job;
use crate::{ChunkRecord, DeliveryUpdate, Journal, NewDelivery, SCHEMA_VERSION};

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
    // Durable progress counts the chunks' data, not their whole length.
    assert_eq!(r.done_bytes, 3 * (6 << 20));
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

/// The schema as version 2 wrote it (before `deliveries`), verbatim.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    source        TEXT NOT NULL,
    destination   TEXT NOT NULL,
    partial       TEXT NOT NULL DEFAULT '',
    options       TEXT NOT NULL DEFAULT '{}',
    facts         TEXT NOT NULL DEFAULT '{}',
    status        TEXT NOT NULL,
    error         TEXT,
    pid           INTEGER,
    partial_state TEXT NOT NULL DEFAULT 'none',
    cancel_request TEXT,
    chunk_size    INTEGER NOT NULL DEFAULT 0,
    total_bytes   INTEGER NOT NULL DEFAULT 0,
    runs          INTEGER NOT NULL DEFAULT 1,
    report        TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS phases (
    job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    phase      TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    duration_ms INTEGER,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS chunks (
    job_id  TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    offset  INTEGER NOT NULL,
    len     INTEGER NOT NULL,
    bytes   INTEGER NOT NULL,
    digest  BLOB NOT NULL,
    run     INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (
    job_id             TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    phase              TEXT NOT NULL,
    done_bytes         INTEGER NOT NULL,
    total_bytes        INTEGER NOT NULL,
    rate_bytes_per_sec INTEGER NOT NULL,
    eta_ms             INTEGER,
    updated_at         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bwlimit_changes (
    job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    bytes_per_sec INTEGER NOT NULL,
    requested_at  TEXT NOT NULL,
    applied_at    TEXT,
    PRIMARY KEY (job_id, seq)
);
";

#[test]
fn a_version_2_journal_opens_migrated_to_the_current_schema_with_its_jobs_and_chunks_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; {SCHEMA_V2} PRAGMA user_version=2;"
        ))
        .unwrap();
        c.execute(
            "INSERT INTO jobs (id, kind, source, destination, status, created_at, updated_at)
             VALUES ('old-1', 'offline', '/a/x.raw', '/b/x.raw', 'succeeded',
                     '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
        // A chunk of an older build: no `data` column, its length stands in.
        c.execute(
            "INSERT INTO chunks (job_id, idx, offset, len, bytes, digest, run)
             VALUES ('old-1', 0, 0, 1048576, 4096, x'00', 1)",
            [],
        )
        .unwrap();
    }
    // Read-only (`vmshift status` of an old journal): the job reads, deliveries do not.
    let ro = Journal::open_read_only(&path).unwrap();
    assert_eq!(ro.job("old-1").unwrap().status, "succeeded");
    assert_eq!(ro.job("old-1").unwrap().done_bytes, 1 << 20);
    assert_eq!(ro.chunks("old-1").unwrap()[0].data, 1 << 20);
    assert!(ro.deliveries("old-1").is_err());
    drop(ro);

    let j = Journal::open(&path).unwrap();
    let v: i64 = j
        .conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!((v, SCHEMA_VERSION), (4, 4));
    assert_eq!(j.job("old-1").unwrap().done_bytes, 1 << 20);
    assert_eq!(j.chunks("old-1").unwrap()[0].data, 1 << 20);
    let old = j.job("old-1").unwrap();
    assert_eq!(
        (old.source.as_str(), old.status.as_str()),
        ("/a/x.raw", "succeeded")
    );
    j.record_delivery(&NewDelivery {
        id: "d1".into(),
        job_id: "old-1".into(),
        target: "command".into(),
        event: "job.succeeded".into(),
    })
    .unwrap();
    assert_eq!(j.deliveries("old-1").unwrap()[0].state, "pending");
    drop(j);
    // Opening again changes nothing.
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.deliveries("old-1").unwrap().len(), 1);
}

#[test]
fn forgetting_a_job_forgets_its_deliveries_and_old_ones_of_unrecorded_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("journal.sqlite")).unwrap();
    j.create_job(&job("01aa-1")).unwrap();
    for (id, job_id) in [
        ("d1", "01aa-1"),
        ("d2", "no-journal-old"),
        ("d3", "no-journal-new"),
    ] {
        j.record_delivery(&NewDelivery {
            id: id.into(),
            job_id: job_id.into(),
            target: "chat".into(),
            event: "job.started".into(),
        })
        .unwrap();
    }
    j.update_delivery(
        "d2",
        &DeliveryUpdate {
            attempts: 1,
            state: "delivered".into(),
            last_status: Some(204),
            last_error: None,
        },
    )
    .unwrap();
    j.conn
        .execute(
            "UPDATE deliveries SET updated_at = '2025-01-01T00:00:00.000Z' WHERE id = 'd2'",
            [],
        )
        .unwrap();
    j.delete_job("01aa-1").unwrap();
    assert!(j.deliveries("01aa-1").unwrap().is_empty());
    assert!(j.deliveries("no-journal-old").unwrap().is_empty());
    assert_eq!(j.deliveries("no-journal-new").unwrap().len(), 1);
}

//! A job's shown status never says `interrupted` for a job that just ended: the record a
//! reader holds may predate the final status, journaled just before the job let go of its
//! lock.

use vmshift_journal::jobs::NewJob;
use vmshift_runner::journal::{open_journal, settled, shown_status};

#[test]
fn a_stale_running_record_shows_the_journaled_status_and_a_dead_job_shows_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("VMSHIFT_STATE_DIR", dir.path().join("state"));
    let j = open_journal().unwrap();
    for id in ["ended", "dead"] {
        j.create_job(&NewJob {
            id: id.into(),
            kind: "offline".into(),
            source: "/a/x.raw".into(),
            destination: "/b/x.raw".into(),
            partial: "/b/x.raw.vmshift-partial".into(),
            options: serde_json::json!({}),
            facts: serde_json::json!({}),
            chunk_size: 1 << 20,
            total_bytes: 0,
        })
        .unwrap();
    }
    // Read while running, then the job ends (and nobody holds its lock).
    let stale = j.job("ended").unwrap();
    assert_eq!(stale.status, "running");
    j.set_report("ended", "/state/reports/ended.json").unwrap();
    j.set_status("ended", "succeeded", None).unwrap();
    assert_eq!(shown_status(&stale), "succeeded");
    // The whole record, not the new status over the old report.
    let now = settled(&j, stale);
    assert_eq!(
        (now.status.as_str(), now.report.as_deref()),
        ("succeeded", Some("/state/reports/ended.json"))
    );
    // Still running in the journal with no process holding it: interrupted.
    assert_eq!(shown_status(&j.job("dead").unwrap()), "interrupted");
}

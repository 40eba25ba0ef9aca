//! The quick start's first command, as a newcomer runs it: `reseedfs demo` on real loop
//! volumes must tell the whole story (the disk's death hidden from the writers, AutoReseed
//! seeding the spare under them, both copies verified) and exit 0.
//!
//! Needs root, `/dev/fuse` and loop devices; elsewhere prints `SKIPPED` (fails under
//! `CI=true`).

#![cfg(target_os = "linux")]

mod common;

use std::process::Command;

use common::{BIN, describe_output, require_mount_privileges};

#[test]
fn the_demo_tells_the_whole_story_and_verifies_both_copies() {
    if !require_mount_privileges("the_demo_tells_the_whole_story_and_verifies_both_copies") {
        return;
    }
    let out = Command::new(BIN)
        .args(["demo", "--seconds", "8"])
        .output()
        .expect("run reseedfs demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{}",
        describe_output(&out)
    );
    for want in [
        "AutoReseed timings shortened for the demo",
        "copies in sync again",
        "the story, from the disk's death:",
        "copy.healthy",
        "ran on one copy for",
        "every block reads back intact",
    ] {
        assert!(
            text.contains(want),
            "the demo's output lacks {want:?}:\n{text}"
        );
    }
    // Every step of the story is there, in order.
    let story = &text[text
        .find("the story, from the disk's death:")
        .expect("story")..];
    let mut at = 0;
    for id in ["1109", "825", "826", "827", "828", "1110"] {
        let i = story[at..]
            .find(&format!(" {id} "))
            .unwrap_or_else(|| panic!("event {id} missing from the story:\n{story}"));
        at += i + 1;
    }
    assert!(!story.contains("(not seen)"), "{story}");
    assert_eq!(
        text.matches(": all intact").count(),
        3,
        "through the mount and on both copies:\n{text}"
    );
}

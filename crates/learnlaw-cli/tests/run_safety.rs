//! Run directories that cannot be mixed, crashed or misread (issue 12), end to end on tiny
//! problems: one owner per directory, files learnlaw did not write left alone, writes that a full
//! disk cannot half-do, and messages that name the setting, the quantity or the option to change.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod common;

use common::{command, fails, learnlaw, ok, text};

/// The tiny problem every test here searches: D = 16, N = 256, T = 50.
const STEPS: [&str; 2] = ["--steps", "50"];

fn data(dir: &Path) -> String {
    ok(&["data", "perceptron", "--out", "d.safetensors", "--dim", "16", "--train", "256", "--dev", "64", "--test", "64"], dir);
    "d.safetensors".into()
}

/// `search --data D --out OUT --steps 50` with `more` settings.
fn search<'a>(out: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    [&["search", "--data", "d.safetensors", "--out", out][..], &STEPS, more].concat()
}

/// Every file under `dir` but the lock (relative path → bytes), to show what a command changed.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            files.extend(snapshot(&path).into_iter().map(|(n, b)| (format!("{name}/{n}"), b)));
        } else if name != ".lock" {
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    files
}

/// The files that differ between two snapshots (added, removed or changed).
fn changed(before: &BTreeMap<String, Vec<u8>>, after: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// A second search, an eval or a report on a directory whose search is running is refused,
/// naming the process that holds it, and changes nothing; a SIGKILL releases the directory.
#[cfg(unix)]
#[test]
fn a_running_search_owns_its_directory_until_it_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    let first = common::spawn(&search("run", &["--epochs", "100000000"]), cwd);
    common::wait_for(&cwd.join("run/.lock"), &format!("pid {}:", first.id()));
    common::wait_for(&cwd.join("run/config.toml"), "100000000");
    let config = std::fs::read(cwd.join("run/config.toml")).unwrap();
    for args in [search("run", &["--epochs", "1200", "--outer-lr", "0.004"]), vec!["eval", "run"], vec!["report", "run"]] {
        let err = fails(&args, cwd);
        assert!(
            err.contains("run is in use") && err.contains(&format!("pid {}:", first.id())) && err.contains("--epochs 100000000"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(cwd.join("run/config.toml")).unwrap(), config, "the refused search wrote nothing");
    first.signal("KILL");
    first.wait();
    // The OS released the lock with the process: eval now gets to the run itself.
    let out = learnlaw(&["eval", "run"], cwd);
    assert!(!text(&out.stderr).contains("in use"), "{}", text(&out.stderr));
}

/// A search stopped, evaluated, then resumed further: the report warns that the evaluation is
/// stale, on screen and in report.md.
#[cfg(unix)]
#[test]
fn the_report_warns_about_an_evaluation_older_than_the_search() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    let args = search("run", &["--epochs", "100000000"]);
    let evaluated = common::interrupt(&args, cwd);
    ok(&["eval", "run"], cwd);
    let out = learnlaw(&["report", "run"], cwd);
    assert!(out.status.success() && !text(&out.stderr).contains("warning"), "{}", text(&out.stderr));
    let now = common::interrupt(&args, cwd);
    let out = learnlaw(&["report", "run"], cwd);
    let warning = format!("after outer epoch {evaluated}, but the search has since run to epoch {now}");
    assert!(out.status.success() && text(&out.stderr).contains(&warning), "{}", text(&out.stderr));
    let md = std::fs::read_to_string(cwd.join("run/report/report.md")).unwrap();
    assert!(md.contains("**Warning:**") && md.contains(&warning) && md.contains("learnlaw eval run"), "{md}");
}

/// Files that are not learnlaw's are never replaced: search refuses a folder holding them, eval a
/// run whose summary.json or curves.csv it did not write, report a folder with a foreign report.md.
#[test]
fn files_learnlaw_did_not_write_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    for (name, content) in [("config.toml", "title = \"my project\"\n"), ("summary.json", "{\"mine\": 1}"), ("curves.csv", "a,b\n1,2\n")] {
        std::fs::create_dir(cwd.join(name)).unwrap();
        std::fs::write(cwd.join(name).join(name), content).unwrap();
        let err = fails(&search(name, &["--epochs", "1"]), cwd);
        assert!(err.contains(name) && err.contains("folder"), "{err}");
        assert_eq!(std::fs::read_to_string(cwd.join(name).join(name)).unwrap(), content);
        assert!(!cwd.join(name).join("policy.safetensors").exists());
    }

    ok(&search("run", &["--epochs", "1"]), cwd);
    ok(&["eval", "run"], cwd);
    for name in ["summary.json", "curves.csv"] {
        let path = cwd.join("run").join(name);
        let ours = std::fs::read(&path).unwrap();
        std::fs::write(&path, "not learnlaw's").unwrap();
        let err = fails(&["eval", "run"], cwd);
        assert!(err.contains(name), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not learnlaw's");
        std::fs::write(&path, ours).unwrap();
    }
    for out in ["run/report", "elsewhere"] {
        std::fs::create_dir_all(cwd.join(out)).unwrap();
        std::fs::write(cwd.join(out).join("report.md"), "# My report\n").unwrap();
        let err = fails(&["report", "run", "--out", out], cwd);
        assert!(err.contains("use a new or empty folder"), "{err}");
        assert_eq!(std::fs::read_to_string(cwd.join(out).join("report.md")).unwrap(), "# My report\n");
    }
    std::fs::remove_dir_all(cwd.join("run/report")).unwrap();
    ok(&["report", "run"], cwd);
    ok(&["report", "run"], cwd);
}

/// `--out` naming an existing file is a clear error, for a run and for a report.
#[test]
fn out_naming_a_file_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    std::fs::write(cwd.join("a-file"), "x").unwrap();
    let err = fails(&search("a-file", &["--epochs", "1"]), cwd);
    assert!(err.contains("a-file") && err.contains("is a file, not a folder"), "{err}");
    ok(&search("run", &["--epochs", "1"]), cwd);
    ok(&["eval", "run"], cwd);
    let err = fails(&["report", "run", "--out", "a-file"], cwd);
    assert!(err.contains("a-file") && err.contains("is a file, not a folder"), "{err}");
}

/// A full disk during `eval` or `report` leaves the files as they were, with no half-written
/// figure and no temporaries: every output is staged and renamed into place once all are
/// written. The write failure is real: the kernel's file-size limit (RLIMIT_FSIZE, `ulimit -f`
/// in KiB under bash, SIGXFSZ ignored) fails the write the way a full disk does.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_leaves_the_previous_outputs_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    ok(&search("run", &["--epochs", "3"]), cwd);
    ok(&["eval", "run"], cwd);
    ok(&["report", "run"], cwd);
    let limited = |kib: u64, args: &[&str]| {
        let script = format!("trap '' XFSZ; ulimit -f {kib}; exec \"$0\" \"$@\"");
        let mut bash = std::process::Command::new("bash");
        bash.arg("-c").arg(script).arg(env!("CARGO_BIN_EXE_learnlaw")).args(args).env_remove("RUST_BACKTRACE").current_dir(cwd);
        let out = bash.output().unwrap();
        assert!(!out.status.success(), "{args:?} under a {kib} KiB limit should fail: {}", text(&out.stdout));
        assert!(out.status.code().is_some() && !text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let size = |name: &str| std::fs::metadata(cwd.join("run").join(name)).unwrap().len();
    // eval writes curves.csv, then summary.json: a limit between their sizes fails the second.
    let kib = 6;
    assert!(size("curves.csv") < kib * 1024 && kib * 1024 < size("summary.json"), "sizes changed: pick another limit");
    let before = snapshot(&cwd.join("run"));
    let err = limited(kib, &["eval", "run", "--backend", "cpu-f64"]);
    assert!(err.contains("summary.json"), "{err}");
    assert_eq!(changed(&before, &snapshot(&cwd.join("run"))), Vec::<String>::new(), "curves.csv and summary.json are both the old ones");
    // report: the PNGs exceed 40 KiB, the first SVG and analysis.json do not.
    let err = limited(40, &["report", "run"]);
    assert!(err.contains(".png"), "{err}");
    assert_eq!(changed(&before, &snapshot(&cwd.join("run"))), Vec::<String>::new(), "no figure is half-written or replaced");
}

/// Messages that name the setting: negative numbers after a space reach the range check, a block
/// longer than the run is refused, and a resume names what differs (or why a change is allowed).
#[test]
fn messages_name_the_setting_and_its_values() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    for (setting, value, named) in [("--eta", "-1", "eta = -1"), ("--outer-lr", "-0.5", "outer_lr = -0.5"), ("--steps", "-1", "--steps")] {
        let err = fails(&["search", "--data", "d.safetensors", "--out", "run", "--epochs", "1", setting, value], cwd);
        assert!(err.contains(named) && !err.contains("unexpected argument"), "{setting} {value}: {err}");
    }
    let err = fails(&["data", "perceptron", "--out", "x.safetensors", "--label-noise", "-0.1"], cwd);
    assert!(err.contains("train_label_noise = -0.1"), "{err}");
    let err = fails(&search("run", &["--epochs", "1", "--block-steps", "51"]), cwd);
    assert!(err.contains("block_steps = 51") && err.contains("T = 50"), "{err}");
    assert!(!cwd.join("run").exists(), "nothing is created for rejected settings");

    ok(&search("run", &["--epochs", "2"]), cwd);
    let out = ok(&search("run", &["--epochs", "2", "--backend", "cpu-f64", "--checkpoint-every", "5"]), cwd);
    assert!(out.contains("resuming with --backend: cpu in the run, cpu-f64 now"), "{out}");
    assert!(out.contains("resuming with --checkpoint-every: not set in the run, 5 now"), "{out}");
    let err = fails(&search("run", &["--epochs", "3", "--init-seed", "11"]), cwd);
    assert!(err.contains("--epochs: 2 in the run, 3 now") && err.contains("--init-seed: 10 in the run, 11 now"), "{err}");
}

/// Sizes that cannot fit in memory are refused with the figure and the option to change, before
/// anything is allocated or created (they used to abort in the allocator).
#[cfg(target_os = "linux")]
#[test]
fn sizes_that_cannot_fit_are_refused_with_the_figure() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    let err = fails(&["search", "--data", "d.safetensors", "--out", "run", "--steps", "1000000000", "--epochs", "1"], cwd);
    assert!(err.contains("needs about") && err.contains("TB of memory") && err.contains("--steps"), "{err}");
    assert!(!cwd.join("run").exists());
    let err = fails(&["data", "perceptron", "--out", "big.safetensors", "--dim", "1000000", "--train", "1000000"], cwd);
    assert!(err.contains("TB of memory") && err.contains("--train") && err.contains("--dim"), "{err}");
    assert!(!cwd.join("big.safetensors").exists());
}

/// Training that makes no progress: AR 1 with a note that says so (not T×), no NaN in the
/// report, and no −0.000 anywhere (zero epochs).
#[test]
fn flat_training_reads_as_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    let out = ok(&search("zero", &["--epochs", "0"]), cwd);
    assert!(out.contains("0.000 s per outer epoch") && !out.contains("-0.000"), "{out}");
    ok(&search("flat", &["--epochs", "2", "--eta", "1e-20"]), cwd);
    let out = ok(&["eval", "flat"], cwd);
    assert!(out.contains("AR test 1.00×   AR dev 1.00×   (T = 50)"), "{out}");
    assert!(out.contains("reaches its final value at step 1 of 50 (flat: training makes no progress"), "{out}");
    assert!(!out.contains("-0.000"), "{out}");
    let out = learnlaw(&["report", "flat"], cwd);
    let all = text(&out.stdout) + &text(&out.stderr) + &std::fs::read_to_string(cwd.join("flat/report/report.md")).unwrap();
    assert!(out.status.success() && !all.contains("NaN"), "{all}");
}

/// An inner learning rate so large that the losses stay finite but the policy gradient swamps
/// f32: the update would leave γ off the simplex, so the search fails saying so and saves no
/// policy that `eval` would then refuse.
#[test]
fn an_update_off_the_simplex_is_an_error_not_a_saved_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    data(cwd);
    let err = fails(&search("huge", &["--epochs", "1", "--eta", "1e30"]), cwd);
    assert!(err.contains("off the simplex") && err.contains("lower the outer learning rate"), "{err}");
    assert!(!cwd.join("huge/policy.safetensors").exists());
}

/// A user's mistake prints its message, never a backtrace, even with RUST_BACKTRACE set.
#[test]
fn errors_print_no_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let out = command(&["eval", "nowhere"], tmp.path()).env("RUST_BACKTRACE", "1").output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("Error: ") && err.contains("not a run directory"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

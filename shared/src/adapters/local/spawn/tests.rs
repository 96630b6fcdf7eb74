use std::io::Read;

use super::*;

/// Runs `script` with bash under `launch`'s settings; gives back its exit status and output.
async fn run(mut launch: Launch, script: &str) -> (ExitStatus, String, i32) {
    launch.args(["-c", script]);
    let (reader, writer) = output_pipe().unwrap();
    let stderr = writer.try_clone().unwrap();
    let mut process = launch.spawn(writer, stderr).unwrap();
    let pid = process.id();
    let status = process.wait().await.unwrap();
    let mut output = String::new();
    std::fs::File::from(reader)
        .read_to_string(&mut output)
        .unwrap();
    (status, output, pid)
}

fn bash() -> Launch {
    let mut launch = Launch::new("bash");
    launch.env("PATH", std::env::var_os("PATH").unwrap());
    launch
}

#[tokio::test]
async fn a_process_starts_with_its_limits_group_environment_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut launch = bash();
    launch
        .env("ONLY_THIS", "yes")
        .current_dir(dir.path())
        .limits(Limits {
            cpus: 1,
            memory_mib: 1024,
        });
    let script = "ulimit -v; grep Cpus_allowed_list /proc/self/status; \
                  echo \"pgid=$(ps -o pgid= $$ | tr -d ' ') pid=$$\"; \
                  echo \"home=${HOME-unset} only=$ONLY_THIS cwd=$PWD\"; \
                  read -r line; echo \"stdin=$?\"";
    let (status, output, pid) = run(launch, script).await;
    assert!(status.success(), "{status:?}: {output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "1048576", "{output}");
    let cpus = lines[1].split(':').nth(1).unwrap().trim();
    assert!(cpus.parse::<u32>().is_ok(), "more than one CPU: {cpus}");
    assert_eq!(lines[2], format!("pgid={pid} pid={pid}"));
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(
        lines[3],
        format!("home=unset only=yes cwd={}", cwd.display())
    );
    assert_eq!(
        lines[4], "stdin=1",
        "stdin is /dev/null: read finds its end"
    );
}

#[tokio::test]
async fn exit_codes_and_signals_come_back_and_sigpipe_is_not_ignored() {
    let (status, _, _) = run(bash(), "exit 3").await;
    assert_eq!(status.code(), Some(3));
    // Rust ignores SIGPIPE for itself; the task must not inherit that.
    let (status, output, _) = run(bash(), "kill -PIPE $$; echo survived").await;
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{output}");
}

#[tokio::test]
async fn a_program_that_cannot_start_is_an_error_naming_it() {
    let mut missing = Launch::new("no-such-program-here");
    missing.env("PATH", "/nonexistent:/also-not");
    let (_, writer) = output_pipe().unwrap();
    let err = missing
        .spawn(writer.try_clone().unwrap(), writer)
        .err()
        .unwrap();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    let text = err.to_string();
    assert!(
        text.contains("no-such-program-here") && text.contains("/also-not"),
        "{text}"
    );

    let mut bad_dir = bash();
    bad_dir.current_dir("/nonexistent/dir");
    let (_, writer) = output_pipe().unwrap();
    let err = bad_dir
        .spawn(writer.try_clone().unwrap(), writer)
        .err()
        .unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
}

#[tokio::test]
async fn a_dropped_process_is_killed_and_reaped() {
    let mut sleeper = Launch::new("/bin/sleep");
    sleeper.arg("30");
    let (_, writer) = output_pipe().unwrap();
    let process = sleeper.spawn(writer.try_clone().unwrap(), writer).unwrap();
    let pid = process.id();
    assert!(super::super::layout::process_exists(pid));
    drop(process);
    assert!(
        !super::super::layout::process_exists(pid),
        "pid {pid} is still there (not killed, or a zombie)"
    );
}

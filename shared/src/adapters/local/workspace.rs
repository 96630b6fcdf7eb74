//! Task workspaces, recycled.
//!
//! A workspace is `workspaces/<task_id>/` with an empty `.tmp/` (the task's `TMPDIR`) and,
//! when the task file comes from the tasks directory, a copy of it in `tasks/`. Creating and
//! removing directories is the dearest thing a short task does to the file system (on ext4
//! with `discard`, an `rmdir` costs milliseconds), so a removed workspace that holds nothing
//! but that skeleton is emptied and parked in `workspaces/.free/`, and the next task takes
//! it over with a rename. Anything else a task left behind is removed as before.

use std::io;
use std::path::{Path, PathBuf};

/// Where emptied workspaces wait for their next task.
const FREE: &str = ".free";
/// The task's temporary directory inside its workspace.
pub const TMP: &str = ".tmp";
/// The copy of the tasks directory inside a workspace.
pub const TASKS: &str = "tasks";
/// At most this many emptied workspaces are kept.
const MAX_FREE: usize = 1024;

/// Creates the workspace `workspace` (in its parent, the workspaces directory) with its
/// `.tmp`, taking over an emptied one when there is one. `with_tasks`: the task will copy
/// the tasks directory in (an emptied workspace's empty `tasks/` stays for it).
pub fn create(workspace: &Path, with_tasks: bool) -> io::Result<()> {
    if let Some(free) = workspace.parent().map(|root| root.join(FREE))
        && let Ok(entries) = std::fs::read_dir(&free)
    {
        for entry in entries.flatten() {
            // Another task may take the same one first: then the rename fails; try the next.
            if std::fs::rename(entry.path(), workspace).is_ok() {
                let tasks = workspace.join(TASKS);
                if !with_tasks && tasks.exists() {
                    std::fs::remove_dir(tasks)?;
                }
                return Ok(());
            }
        }
    }
    std::fs::create_dir_all(workspace.join(TMP))
}

/// Removes the workspace `workspace`; `Ok` when it does not exist.
pub fn remove(workspace: &Path) -> io::Result<()> {
    match recycle(workspace) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    match std::fs::remove_dir_all(workspace) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Empties the workspace and parks it in `.free/`, when it holds only the skeleton (an
/// empty `.tmp/`, plain files in `tasks/`). False when it holds anything else.
fn recycle(workspace: &Path) -> io::Result<bool> {
    let Some((root, name)) = workspace.parent().zip(workspace.file_name()) else {
        return Ok(false);
    };
    let mut files = Vec::new();
    let mut has_tmp = false;
    for entry in std::fs::read_dir(workspace)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        match entry.file_name().to_str() {
            Some(TMP) if kind.is_dir() => {
                if std::fs::read_dir(entry.path())?.next().is_some() {
                    return Ok(false);
                }
                has_tmp = true;
            }
            Some(TASKS) if kind.is_dir() => {
                for file in std::fs::read_dir(entry.path())? {
                    let file = file?;
                    if !file.file_type()?.is_file() {
                        return Ok(false);
                    }
                    files.push(file.path());
                }
            }
            _ => return Ok(false),
        }
    }
    let free = root.join(FREE);
    if !has_tmp || free_count(&free) >= MAX_FREE {
        return Ok(false);
    }
    for file in files {
        std::fs::remove_file(file)?;
    }
    std::fs::create_dir_all(&free)?;
    let parked: PathBuf = free.join(name);
    std::fs::rename(workspace, &parked)?;
    Ok(true)
}

fn free_count(free: &Path) -> usize {
    std::fs::read_dir(free).map_or(0, |entries| entries.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_skeleton_is_taken_over_empty_by_the_next_task() {
        let root = tempfile::tempdir().unwrap();
        let first = root.path().join("first");
        create(&first, true).unwrap();
        std::fs::create_dir_all(first.join(TASKS)).unwrap();
        std::fs::write(first.join(TASKS).join("ok.sh"), "exit 0\n").unwrap();
        remove(&first).unwrap();
        assert!(!first.exists());

        let second = root.path().join("second");
        create(&second, true).unwrap();
        assert!(second.join(TMP).is_dir());
        // Nothing of the first task is left in it.
        let tasks: Vec<_> = std::fs::read_dir(second.join(TASKS)).unwrap().collect();
        assert!(tasks.is_empty());
        assert_eq!(free_count(&root.path().join(FREE)), 0);

        // A task that copies no tasks directory finds none.
        remove(&second).unwrap();
        let third = root.path().join("third");
        create(&third, false).unwrap();
        assert!(third.join(TMP).is_dir());
        assert!(!third.join(TASKS).exists());
    }

    #[test]
    fn a_workspace_with_anything_else_in_it_is_removed_whole() {
        let root = tempfile::tempdir().unwrap();
        for (name, extra) in [("a", "output.txt"), ("b", ".tmp/scratch")] {
            let workspace = root.path().join(name);
            create(&workspace, true).unwrap();
            std::fs::write(workspace.join(extra), "left behind").unwrap();
            remove(&workspace).unwrap();
            assert!(!workspace.exists());
        }
        assert_eq!(free_count(&root.path().join(FREE)), 0);
        // Removing what does not exist is fine.
        remove(&root.path().join("never")).unwrap();
    }
}

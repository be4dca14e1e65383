//! Shared by the tests and the benchmark: a private copy of the shipped configuration tree
//! (config/, routes/, mappings/) that a test may change without touching the repository.

use std::path::Path;

/// The directories `synchub` reads its configuration from, side by side.
pub(crate) const CONFIG_DIRS: [&str; 3] = ["config", "routes", "mappings"];

/// Copies config/, routes/ and mappings/ of `repo` into `root`.
pub(crate) fn copy_shipped_config(repo: &Path, root: &Path) {
    for sub in CONFIG_DIRS {
        copy_tree(&repo.join(sub), &root.join(sub));
    }
}

/// Recursive copy of a directory.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for e in std::fs::read_dir(from).expect("read directory") {
        let e = e.expect("directory entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy file");
        }
    }
}

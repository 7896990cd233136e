//! Which YAML files a directory of resources holds: its own, or (recursive, as `kubectl apply
//! -R` and `flowgate check` read a directory) those of its subdirectories too.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// A directory of resources as `flowgate run --resources-dir` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcesDir {
    pub path: PathBuf,
    /// Subdirectories too (`--resources-recursive`).
    pub recursive: bool,
}

impl ResourcesDir {
    /// The directory's own files only.
    pub fn flat(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            recursive: false,
        }
    }

    /// Its `*.yaml`/`*.yml` files in path order. Recursive, hidden entries are skipped (`.git`,
    /// a ConfigMap mount's `..data`, whose files the mount also links at its top), each
    /// directory and file is read once however many links lead to it, and a link (to a
    /// directory or a file) that leads out of this directory is not followed: what is served is
    /// what is under the directory. The directory itself must be listable.
    pub fn yaml_files(&self) -> io::Result<YamlFiles> {
        let mut found = YamlFiles::default();
        if !self.recursive {
            found.files = yaml_entries(&self.path, false)?.files;
            return Ok(found);
        }
        let root = self.path.canonicalize()?;
        let mut seen = Seen {
            dirs: BTreeSet::from([root.clone()]),
            files: BTreeSet::new(),
        };
        walk(&self.path, &root, &mut seen, &mut found)?;
        found.files.sort();
        found.outside.sort();
        Ok(found)
    }
}

/// The YAML files found, and the subdirectories that were not read.
#[derive(Debug, Default)]
pub struct YamlFiles {
    pub files: Vec<PathBuf>,
    /// Subdirectories that could not be listed, and why: the files last read under them stay.
    pub unlisted: Vec<(PathBuf, io::Error)>,
    /// Links that lead out of the directory being read, not followed.
    pub outside: Vec<PathBuf>,
}

/// The YAML files and (`dirs`) the subdirectories of one directory, hidden ones skipped when
/// `dirs`, in name order.
struct Entries {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

fn yaml_entries(dir: &Path, dirs: bool) -> io::Result<Entries> {
    let mut entries = Entries {
        files: Vec::new(),
        dirs: Vec::new(),
    };
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if dirs && hidden {
            continue;
        }
        if dirs && path.is_dir() {
            entries.dirs.push(path);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            entries.files.push(path);
        }
    }
    entries.files.sort();
    entries.dirs.sort();
    Ok(entries)
}

/// What a recursive walk has read, by real path.
struct Seen {
    dirs: BTreeSet<PathBuf>,
    files: BTreeSet<PathBuf>,
}

fn walk(dir: &Path, root: &Path, seen: &mut Seen, found: &mut YamlFiles) -> io::Result<()> {
    let entries = yaml_entries(dir, true)?;
    for file in entries.files {
        // One that cannot be resolved (a dangling link) is read, and reported, as it is.
        match file.canonicalize() {
            Ok(real) if !real.starts_with(root) => found.outside.push(file),
            Ok(real) => {
                if seen.files.insert(real) {
                    found.files.push(file);
                }
            }
            Err(_) => found.files.push(file),
        }
    }
    for sub in entries.dirs {
        let real = match sub.canonicalize() {
            Ok(real) => real,
            Err(error) => {
                found.unlisted.push((sub, error));
                continue;
            }
        };
        if !real.starts_with(root) {
            found.outside.push(sub);
            continue;
        }
        if !seen.dirs.insert(real) {
            continue;
        }
        if let Err(error) = walk(&sub, root, seen, found) {
            found.unlisted.push((sub, error));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, "# nothing\n").expect("write");
    }

    fn names(dir: &Path, files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|p| {
                p.strip_prefix(dir)
                    .expect("under dir")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn flat_reads_the_directory_and_recursive_the_tree_inside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for file in [
            "b.yaml",
            "a.yml",
            "notes.txt",
            "teams/x/policy.yaml",
            "teams/a.yaml",
            ".git/config.yaml",
            "..data/cm.yaml",
        ] {
            write(&d.join(file));
        }
        let flat = ResourcesDir::flat(d).yaml_files().expect("listed");
        assert_eq!(names(d, &flat.files), ["a.yml", "b.yaml"]);

        let outside = tempfile::tempdir().expect("tempdir");
        write(&outside.path().join("elsewhere.yaml"));
        std::os::unix::fs::symlink(outside.path(), d.join("linked-out")).expect("link");
        // A link back into the tree is read once, under the name met first.
        std::os::unix::fs::symlink(d.join("teams"), d.join("z-again")).expect("link");
        std::os::unix::fs::symlink(d, d.join("teams/x/root")).expect("link");
        std::os::unix::fs::symlink(outside.path().join("elsewhere.yaml"), d.join("out.yaml"))
            .expect("link");
        std::os::unix::fs::symlink(d.join("b.yaml"), d.join("c.yaml")).expect("link");
        let tree = ResourcesDir {
            path: d.to_path_buf(),
            recursive: true,
        }
        .yaml_files()
        .expect("listed");
        assert_eq!(
            names(d, &tree.files),
            ["a.yml", "b.yaml", "teams/a.yaml", "teams/x/policy.yaml"]
        );
        assert_eq!(names(d, &tree.outside), ["linked-out", "out.yaml"]);
        assert!(tree.unlisted.is_empty());
    }
}

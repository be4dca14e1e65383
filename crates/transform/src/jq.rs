//! Versioned jq mappings (`mappings/<id>/v<N>.jq`): loaded and compiled once with jaq, applied
//! per message on the hot path, and checked against their data-file test cases.
//!
//! Threading: a compiled jaq filter is plain data (terms plus native function *pointers*), so
//! it is `Send + Sync` and one [`Mappings`] is shared by all threads behind an `Arc`. The jq
//! *values* (`jaq_json::Val`) are `Rc`-based and not `Send`, but they only live inside one
//! [`Mappings::apply`] call: input and output cross the boundary as `serde_json::Value`.
//!
//! Purity: a mapping must give the same output for the same input so that a message can be
//! replayed and its tests are reproducible. The jaq standard library is therefore loaded
//! without `env` (which would also let a mapping copy secrets, held in environment variables,
//! into a partner's message) and without `now`. `halt` is kept only because jaq's own
//! definitions refer to it; here it is a mapping failure, never a process exit.
//!
//! Speed: jaq interprets a tree of boxed iterators and allocates a lot, so a realistic
//! mapping costs tens of microseconds per message (release build). Two stdlib definitions
//! that mappings use constantly (`null`, `type`) are swapped for equivalent natives, which
//! saves about a quarter; object literals and string constants still allocate per call.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::native::{Fun, v};
use jaq_core::{Ctx, DataT, Exn, RunPtr, ValXs, Vars, box_iter::box_once, data::JustLut};
use jaq_json::{Num, Val};
use serde::Deserialize as _;
use serde_json::Value;

use crate::cleanse;

/// jaq's data kind for our filters: plain JSON values, no global data besides the filter.
type Data = JustLut<Val>;
/// A compiled jq program.
type Filter = jaq_core::Filter<Data>;

/// A problem found while loading or testing mappings, reported with file and key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file to look at (the mapping, or the test case's expectation file).
    pub file: PathBuf,
    /// `<id>@v<N>` for a mapping, `<id>/tests/<case>` for a test case, `<id>` for a folder.
    pub key_path: String,
    /// What is wrong, with line and column where jaq gives a position.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}]: {}",
            self.file.display(),
            self.key_path,
            self.message
        )
    }
}

/// Why a mapping could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// No such mapping id, or no such version of it (`<id>@<N>`, as in `Failed`).
    #[error("unknown mapping {0}")]
    Unknown(String),
    /// The mapping ran and failed: a jq error, or not exactly one output.
    #[error("mapping {id}@{version} failed: {message}")]
    Failed {
        /// Mapping id.
        id: String,
        /// Version that ran.
        version: u32,
        /// jaq's message (for `error("...")` the text itself), or the output-count problem.
        message: String,
    },
}

/// Outcome of [`Mappings::run_tests_report`]: how many cases ran and which failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// Number of test cases found and run (passed or failed).
    pub cases: usize,
    /// One entry per failing case, plus layout problems (orphan files, unreadable input...).
    pub problems: Vec<Problem>,
}

/// All mappings of a deployment, compiled once at load; cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Mappings {
    /// id -> version -> compiled filter. `BTreeMap` so that `ids`/`versions` come out sorted
    /// and the latest version is the last entry.
    by_id: BTreeMap<String, BTreeMap<u32, Filter>>,
}

// The runtime shares one `Mappings` across its worker threads; fail the build, not the
// deployment, if a jaq upgrade ever makes compiled filters thread-bound.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Mappings>();
};

impl fmt::Debug for Mappings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions = self
            .by_id
            .iter()
            .map(|(id, vs)| (id, vs.keys().collect::<Vec<_>>()));
        f.debug_map().entries(versions).finish()
    }
}

impl Mappings {
    /// Loads and compiles every `<dir>/<id>/v<N>.jq`. All problems are collected (every
    /// compile error of every file, plus layout mistakes), so one `synchub check` shows them
    /// all. Folders without any `v<N>.jq` (and plain files such as `README.md`) are reported
    /// or ignored as documented in `mappings/README.md`.
    pub fn load(dir: &Path) -> Result<Mappings, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut by_id = BTreeMap::new();
        let entries = match sorted_entries(dir) {
            Ok(entries) => entries,
            Err(message) => {
                return Err(vec![Problem {
                    file: dir.to_path_buf(),
                    key_path: String::new(),
                    message,
                }]);
            }
        };
        for (name, path) in entries {
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            if !is_valid_id(&name) {
                problems.push(Problem {
                    file: path,
                    key_path: name,
                    message: "mapping id must consist of ASCII letters, digits, '_' or '-'"
                        .to_owned(),
                });
                continue;
            }
            if let Some(versions) = load_mapping(&name, &path, &mut problems) {
                by_id.insert(name, versions);
            }
        }
        if problems.is_empty() {
            Ok(Mappings { by_id })
        } else {
            Err(problems)
        }
    }

    /// No mappings at all (for tests and for deployments that route without mapping).
    pub fn empty() -> Mappings {
        Mappings::default()
    }

    /// Mapping ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// Highest version of a mapping, the one used when a route does not pin a version.
    pub fn latest(&self, id: &str) -> Option<u32> {
        self.by_id.get(id)?.keys().next_back().copied()
    }

    /// All versions of a mapping, ascending; empty for an unknown id.
    pub fn versions(&self, id: &str) -> Vec<u32> {
        self.by_id
            .get(id)
            .map(|vs| vs.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Runs the mapping (given version, or latest) and returns the version used with the
    /// single output. Zero outputs, several outputs, a jq error or a `halt` are `Failed`.
    pub fn apply(
        &self,
        id: &str,
        version: Option<u32>,
        input: &Value,
    ) -> Result<(u32, Value), MappingError> {
        let versions = self
            .by_id
            .get(id)
            .ok_or_else(|| MappingError::Unknown(id.to_owned()))?;
        let (version, filter) = match version {
            Some(v) => (
                v,
                versions
                    .get(&v)
                    .ok_or_else(|| MappingError::Unknown(format!("{id}@{v}")))?,
            ),
            None => versions
                .iter()
                .next_back()
                .map(|(v, c)| (*v, c))
                .ok_or_else(|| MappingError::Unknown(id.to_owned()))?,
        };
        let failed = |message: String| MappingError::Failed {
            id: id.to_owned(),
            version,
            message,
        };
        run_filter(filter, input)
            .map(|out| (version, out))
            .map_err(failed)
    }

    /// Runs every data-file test case under `<dir>/<id>/tests/` and returns one problem per
    /// failing case (see [`Mappings::run_tests_report`] for the number of cases run).
    pub fn run_tests(&self, dir: &Path) -> Vec<Problem> {
        self.run_tests_report(dir).problems
    }

    /// Like [`Mappings::run_tests`], but also counts the cases, so a caller can tell "all
    /// passed" from "nothing ran". A case is `<case>.in.json` with either `<case>.out.json`
    /// (JSON equality) or `<case>.err.txt` (failure whose message contains that text), and
    /// optionally `<case>.version` naming the version to run (default: latest).
    pub fn run_tests_report(&self, dir: &Path) -> TestReport {
        let mut report = TestReport::default();
        let entries = match sorted_entries(dir) {
            Ok(entries) => entries,
            Err(message) => {
                report.problems.push(Problem {
                    file: dir.to_path_buf(),
                    key_path: String::new(),
                    message,
                });
                return report;
            }
        };
        for (id, path) in entries {
            let tests = path.join("tests");
            if id.starts_with('.') || !tests.is_dir() {
                continue;
            }
            self.run_mapping_tests(&id, &tests, &mut report);
        }
        report
    }

    fn run_mapping_tests(&self, id: &str, tests: &Path, report: &mut TestReport) {
        let entries = match sorted_entries(tests) {
            Ok(entries) => entries,
            Err(message) => {
                report.problems.push(Problem {
                    file: tests.to_path_buf(),
                    key_path: format!("{id}/tests"),
                    message,
                });
                return;
            }
        };
        // Group the files by case name; a file that belongs to no case is most likely a
        // typo (`foo.out.jsn`, an `.out.json` whose `.in.json` was renamed) and would
        // otherwise silently never be checked.
        let mut cases: BTreeMap<String, CaseFiles> = BTreeMap::new();
        for (name, path) in entries {
            if name.starts_with('.') || name == "README.md" {
                continue;
            }
            let Some((case, kind)) = split_case_file(&name) else {
                report.problems.push(Problem {
                    file: path,
                    key_path: format!("{id}/tests"),
                    message: "not a test case file: expected <case>.in.json, <case>.out.json, \
                              <case>.err.txt or <case>.version"
                        .to_owned(),
                });
                continue;
            };
            let files = cases.entry(case.to_owned()).or_default();
            match kind {
                CaseKind::In => files.input = Some(path),
                CaseKind::Out => files.output = Some(path),
                CaseKind::Err => files.error = Some(path),
                CaseKind::Version => files.version = Some(path),
            }
        }
        if !self.by_id.contains_key(id) && cases.values().any(|c| c.input.is_some()) {
            report.problems.push(Problem {
                file: tests.to_path_buf(),
                key_path: id.to_owned(),
                message: format!("test cases not run: mapping {id} is not loaded"),
            });
            return;
        }
        for (case, files) in cases {
            let key_path = format!("{id}/tests/{case}");
            if files.input.is_some() {
                report.cases += 1;
            }
            if let Err((file, message)) = self.run_case(id, &files) {
                report.problems.push(Problem {
                    file,
                    key_path,
                    message,
                });
            }
        }
    }

    /// Runs one case; `Err` names the file to look at and what went wrong.
    fn run_case(&self, id: &str, files: &CaseFiles) -> Result<(), (PathBuf, String)> {
        let any_file = files
            .input
            .iter()
            .chain(&files.output)
            .chain(&files.error)
            .chain(&files.version)
            .next()
            .cloned()
            .unwrap_or_default();
        let Some(input_path) = &files.input else {
            return Err((any_file, "no <case>.in.json for this case".to_owned()));
        };
        let input: Value = read_json(input_path).map_err(|m| (input_path.clone(), m))?;
        let version = match &files.version {
            Some(path) => Some(read_version(path).map_err(|m| (path.clone(), m))?),
            None => None,
        };
        match (&files.output, &files.error) {
            (Some(_), Some(_)) | (None, None) => Err((
                input_path.clone(),
                "a case needs exactly one of <case>.out.json or <case>.err.txt".to_owned(),
            )),
            (Some(out_path), None) => {
                let expected = read_json(out_path).map_err(|m| (out_path.clone(), m))?;
                match self.apply(id, version, &input) {
                    Ok((_, got)) if got == expected => Ok(()),
                    Ok((v, got)) => Err((out_path.clone(), diff_message(v, &expected, &got))),
                    Err(e) => Err((
                        out_path.clone(),
                        format!(
                            "expected output, got error: {e}\nexpected:\n{}",
                            pretty(&expected)
                        ),
                    )),
                }
            }
            (None, Some(err_path)) => {
                let wanted = fs::read_to_string(err_path)
                    .map_err(|e| (err_path.clone(), format!("cannot read: {e}")))?;
                let wanted = wanted.trim();
                if wanted.is_empty() {
                    // Would match any failure at all, which is not a test.
                    return Err((
                        err_path.clone(),
                        "empty .err.txt: write the expected error text".to_owned(),
                    ));
                }
                match self.apply(id, version, &input) {
                    Err(e) if e.to_string().contains(wanted) => Ok(()),
                    Err(e) => Err((
                        err_path.clone(),
                        format!("expected an error containing {wanted:?}, got error: {e}"),
                    )),
                    Ok((v, got)) => Err((
                        err_path.clone(),
                        format!(
                            "expected an error containing {wanted:?}, but v{v} succeeded with:\n{}",
                            pretty(&got)
                        ),
                    )),
                }
            }
        }
    }
}

/// Files that make up one test case.
#[derive(Default)]
struct CaseFiles {
    input: Option<PathBuf>,
    output: Option<PathBuf>,
    error: Option<PathBuf>,
    version: Option<PathBuf>,
}

enum CaseKind {
    In,
    Out,
    Err,
    Version,
}

fn split_case_file(name: &str) -> Option<(&str, CaseKind)> {
    [
        (".in.json", CaseKind::In),
        (".out.json", CaseKind::Out),
        (".err.txt", CaseKind::Err),
        (".version", CaseKind::Version),
    ]
    .into_iter()
    .find_map(|(suffix, kind)| {
        name.strip_suffix(suffix)
            .filter(|case| !case.is_empty())
            .map(|case| (case, kind))
    })
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
}

/// A `.version` file holds the version number, e.g. `1` (a leading `v` is tolerated).
fn read_version(path: &Path) -> Result<u32, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let text = text.trim();
    text.strip_prefix('v')
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("expected a version number such as 1, got {text:?}"))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Most differences to list before the full documents; the rest is visible in those.
const MAX_DIFFS: usize = 20;

/// A readable account of why `got` is not `expected`: the differing paths first (what a
/// reader wants), then both documents in full.
fn diff_message(version: u32, expected: &Value, got: &Value) -> String {
    let mut diffs = Vec::new();
    diff_values(".", expected, got, &mut diffs);
    let mut message = format!("v{version} output differs from the expected output:\n");
    for d in diffs.iter().take(MAX_DIFFS) {
        message.push_str("  ");
        message.push_str(d);
        message.push('\n');
    }
    if diffs.len() > MAX_DIFFS {
        message.push_str(&format!("  ... and {} more\n", diffs.len() - MAX_DIFFS));
    }
    message.push_str(&format!(
        "expected:\n{}\ngot:\n{}",
        pretty(expected),
        pretty(got)
    ));
    message
}

fn diff_values(path: &str, expected: &Value, got: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path == "." {
            format!(".{key}")
        } else {
            format!("{path}.{key}")
        }
    };
    match (expected, got) {
        (Value::Object(e), Value::Object(g)) => {
            for (k, ev) in e {
                match g.get(k) {
                    Some(gv) => diff_values(&join(k), ev, gv, out),
                    None => out.push(format!("{}: missing (expected {ev})", join(k))),
                }
            }
            for (k, gv) in g {
                if !e.contains_key(k) {
                    out.push(format!("{}: unexpected {gv}", join(k)));
                }
            }
        }
        (Value::Array(e), Value::Array(g)) if e.len() == g.len() => {
            let base = if path == "." { "" } else { path };
            for (i, (ev, gv)) in e.iter().zip(g).enumerate() {
                diff_values(&format!("{base}[{i}]"), ev, gv, out);
            }
        }
        _ if expected != got => out.push(format!("{path}: expected {expected}, got {got}")),
        _ => {}
    }
}

/// Directory entries as (file name, path), sorted by name so reports are stable.
fn sorted_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let read = fs::read_dir(dir).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| format!("cannot read directory: {e}"))?;
        entries.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    entries.sort();
    Ok(entries)
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `v<N>.jq` with N a positive decimal without leading zeros (so `v1.jq` and `v01.jq` cannot
/// both claim version 1).
fn parse_version_file(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('v')?.strip_suffix(".jq")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Compiles all versions of one mapping folder; `None` (with problems pushed) if any fails,
/// so a half-broken mapping never serves traffic with a surprising version set.
fn load_mapping(
    id: &str,
    dir: &Path,
    problems: &mut Vec<Problem>,
) -> Option<BTreeMap<u32, Filter>> {
    let entries = match sorted_entries(dir) {
        Ok(entries) => entries,
        Err(message) => {
            problems.push(Problem {
                file: dir.to_path_buf(),
                key_path: id.to_owned(),
                message,
            });
            return None;
        }
    };
    let before = problems.len();
    let mut versions = BTreeMap::new();
    for (name, path) in entries {
        if !name.ends_with(".jq") || path.is_dir() {
            continue;
        }
        let Some(version) = parse_version_file(&name) else {
            problems.push(Problem {
                file: path,
                key_path: id.to_owned(),
                message: "a mapping file must be named v<N>.jq (N = 1, 2, ... without leading \
                          zeros)"
                    .to_owned(),
            });
            continue;
        };
        let key_path = format!("{id}@v{version}");
        let code = match fs::read_to_string(&path) {
            Ok(code) => code,
            Err(e) => {
                problems.push(Problem {
                    file: path,
                    key_path,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match compile(&code) {
            Ok(filter) => {
                versions.insert(version, filter);
            }
            Err(messages) => problems.extend(messages.into_iter().map(|message| Problem {
                file: path.clone(),
                key_path: key_path.clone(),
                message,
            })),
        }
    }
    if versions.is_empty() && problems.len() == before {
        problems.push(Problem {
            file: dir.to_path_buf(),
            key_path: id.to_owned(),
            message: "mapping folder has no v<N>.jq file".to_owned(),
        });
    }
    (problems.len() == before).then_some(versions)
}

/// Native filters of jaq's core, standard library and JSON value type, minus the impure
/// ones (see the module docs), plus the cleansing helpers.
fn natives() -> impl Iterator<Item = Fun<Data>> {
    jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|(name, _, _)| !matches!(*name, "env" | "now"))
        .chain(cleansing_natives())
        .chain(fast_natives())
}

/// jaq-std definitions replaced by natives with the same results, because mappings use them
/// everywhere (`. != null`, `//`, type checks) and the definitions allocate on every call:
/// `null` is `[][0]`, `type` a chain of comparisons against fresh `[]` and `{}`.
const FAST_NATIVES: [&str; 2] = ["null", "type"];

fn fast_natives<D: for<'a> DataT<V<'a> = Val>>() -> impl Iterator<Item = Fun<D>> {
    fast_run_ptrs()
        .into_vec()
        .into_iter()
        .map(jaq_core::native::run)
}

fn fast_run_ptrs<D: for<'a> DataT<V<'a> = Val>>() -> Box<[jaq_core::native::Filter<RunPtr<D>>]> {
    Box::new([
        ("null", v(0), |_| box_once(Ok(Val::Null))),
        ("type", v(0), |cv| {
            let name = match cv.1 {
                Val::Null => "null",
                Val::Bool(_) => "boolean",
                Val::Num(_) => "number",
                Val::TStr(_) | Val::BStr(_) => "string",
                Val::Arr(_) => "array",
                Val::Obj(_) => "object",
            };
            box_once(Ok(Val::utf8_str(name.as_bytes())))
        }),
    ])
}

/// A route's `when` condition: a jq expression judged on the validated record. The record is
/// taken when the expression's single output is neither `false` nor `null` (jq truthiness).
pub struct Predicate {
    source: String,
    filter: Filter,
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Predicate({})", self.source)
    }
}

impl Predicate {
    /// Compiles `expr` with the same language and natives as mappings.
    pub fn compile(expr: &str) -> Result<Predicate, String> {
        let filter = compile(expr).map_err(|errs| errs.join("; "))?;
        Ok(Predicate {
            source: expr.to_owned(),
            filter,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `record` passes; `Err` when the expression fails at run time.
    pub fn test(&self, record: &Value) -> Result<bool, String> {
        let out = run_filter(&self.filter, record)?;
        Ok(!matches!(out, Value::Null | Value::Bool(false)))
    }
}

/// Compiles one mapping; `Err` holds every lex/parse/compile error as "line L, column C: ...".
fn compile(code: &str) -> Result<Filter, Vec<String>> {
    let defs = jaq_core::defs()
        .chain(
            jaq_std::defs()
                .filter(|def| !(def.args.is_empty() && FAST_NATIVES.contains(&def.name))),
        )
        .chain(jaq_json::defs());
    // No module reader: `include`/`import` fail with jaq's "module loading not supported",
    // keeping each mapping self-contained (its version file is the whole program).
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let file = File { code, path: () };
    let modules = loader.load(&arena, file).map_err(|errs| {
        errs.into_iter()
            .flat_map(|(file, err)| load_error_messages(file.code, err))
            .collect::<Vec<_>>()
    })?;
    jaq_core::Compiler::default()
        .with_funs(natives())
        .compile(modules)
        .map_err(|errs| {
            errs.into_iter()
                .flat_map(|(file, errs)| {
                    errs.into_iter().map(move |(name, undefined)| {
                        let what = match undefined {
                            jaq_core::compile::Undefined::Filter(arity) => {
                                format!("undefined filter {name}/{arity}")
                            }
                            other => format!("undefined {} {name}", other.as_str()),
                        };
                        format!("{}: {what}", position(file.code, name))
                    })
                })
                .collect()
        })
}

fn load_error_messages(code: &str, err: jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::Error;
    match err {
        Error::Io(errs) => errs
            .into_iter()
            .map(|(path, e)| format!("{}: cannot load module {path:?}: {e}", position(code, path)))
            .collect(),
        Error::Lex(errs) => errs
            .into_iter()
            .map(|(expected, found)| {
                // For an unclosed delimiter jaq hands over the opening one: point there too,
                // since the end of the file is rarely where the mistake is.
                let opened = match &expected {
                    jaq_core::load::lex::Expect::Delim(open) => {
                        format!(" (opened at {})", position(code, open))
                    }
                    _ => String::new(),
                };
                format!(
                    "{}: expected {}{opened}, found {}",
                    position(code, found),
                    expected.as_str(),
                    snippet(found)
                )
            })
            .collect(),
        Error::Parse(errs) => errs
            .into_iter()
            .map(|(expected, found)| {
                format!(
                    "{}: expected {}, found {}",
                    position(code, found),
                    expected.as_str(),
                    snippet(found)
                )
            })
            .collect(),
    }
}

/// jaq reports positions as sub-slices of the source; turn one into "line L, column C"
/// (1-based, columns in characters).
fn position(code: &str, part: &str) -> String {
    let offset = (part.as_ptr() as usize).wrapping_sub(code.as_ptr() as usize);
    if offset > code.len() || !code.is_char_boundary(offset) {
        return "unknown position".to_owned();
    }
    let before = &code[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}")
}

/// The offending token for a message: jaq sometimes hands over the whole rest of the
/// file, so show its first line, shortened.
fn snippet(found: &str) -> String {
    let first = found.lines().next().unwrap_or("");
    if first.is_empty() {
        return "end of input".to_owned();
    }
    let short: String = first.chars().take(30).collect();
    if short.len() < first.len() {
        format!("`{short}...`")
    } else {
        format!("`{short}`")
    }
}

/// Runs a filter on one input and insists on exactly one output. Only the first two outputs
/// are pulled, so a mapping that accidentally generates an endless stream fails instead of
/// hanging the worker.
fn run_filter(filter: &Filter, input: &Value) -> Result<Value, String> {
    let input = Val::deserialize(input).map_err(|e| format!("input is not representable: {e}"))?;
    let ctx = Ctx::<Data>::new(&filter.lut, Vars::new([]));
    let mut outputs = filter.id.run((ctx, input));
    let first = match outputs.next() {
        None => {
            return Err(
                "produced no output (a mapping must produce exactly one value; \
                        check `select`/`empty` and optional paths)"
                    .to_owned(),
            );
        }
        Some(result) => result.map_err(exception_message)?,
    };
    match outputs.next() {
        None => val_to_json(first),
        Some(Ok(_)) => Err(
            "produced more than one output (a mapping must produce exactly one \
                            value; wrap a stream in [...] to make an array)"
                .to_owned(),
        ),
        Some(Err(e)) => Err(exception_message(e)),
    }
}

/// The message of a jq error: `error("text")` gives `text` itself, other values their JSON.
/// `halt` is reported rather than obeyed: jaq's `unwrap_valr` would `process::exit`, which
/// must never happen inside the hub.
fn exception_message(exn: Exn<'_, Val>) -> String {
    match exn.get_err() {
        Ok(err) => match err.into_val() {
            Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(&s).into_owned(),
            other => other.to_string(),
        },
        Err(exn) => match exn.get_halt() {
            Ok(code) => format!("halt({code}) is not allowed in a mapping"),
            Err(_) => "internal jaq control flow escaped the filter".to_owned(),
        },
    }
}

/// Largest integer an f64 holds exactly; whole floats within it are written as integers.
const MAX_SAFE_INT: f64 = 9_007_199_254_740_992.0;

/// Converts a jq output to JSON. Numbers follow jq's output: a whole float (e.g. `4 / 2`)
/// is written as an integer, NaN as `null`, infinities as the largest finite double.
fn val_to_json(val: Val) -> Result<Value, String> {
    Ok(match val {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(b),
        Val::Num(n) => num_to_json(&n),
        Val::TStr(s) | Val::BStr(s) => Value::String(String::from_utf8_lossy(&s).into_owned()),
        Val::Arr(a) => Value::Array(
            std::rc::Rc::unwrap_or_clone(a)
                .into_iter()
                .map(val_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Val::Obj(o) => {
            let mut map = serde_json::Map::with_capacity(o.len());
            for (k, v) in std::rc::Rc::unwrap_or_clone(o) {
                let key = match k {
                    Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(&s).into_owned(),
                    other => return Err(format!("output object has a non-string key {other}")),
                };
                map.insert(key, val_to_json(v)?);
            }
            Value::Object(map)
        }
    })
}

fn num_to_json(n: &Num) -> Value {
    if let Some(i) = n.as_isize() {
        return Value::from(i as i64);
    }
    let x = match n {
        Num::Float(x) => *x,
        // Big integers and decimal literals: through their text, as jq would print them.
        other => other.to_string().parse::<f64>().unwrap_or(f64::NAN),
    };
    if x.is_nan() {
        Value::Null
    } else if x.is_infinite() {
        Value::from(f64::MAX.copysign(x))
    } else if x.fract() == 0.0 && x.abs() <= MAX_SAFE_INT {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// Applies a cleansing function to a string input. `null` passes through unchanged so that
/// optional fields stay optional (`.email | clean_text`); other non-strings are type errors;
/// a cleansing failure becomes a jq error carrying the cleansing reason (catchable with
/// `try ... catch`).
fn cleanse_native<'a>(
    input: Val,
    f: impl FnOnce(&str) -> Result<String, String>,
) -> ValXs<'a, Val> {
    let result = match &input {
        Val::Null => Ok(Val::Null),
        Val::TStr(s) => match std::str::from_utf8(s) {
            Ok(s) => f(s)
                .map(Val::from)
                .map_err(|reason| jaq_core::Error::new(Val::from(reason))),
            Err(_) => Err(jaq_core::Error::str("string is not valid UTF-8")),
        },
        _ => Err(jaq_core::Error::typ(input.clone(), "string")),
    };
    box_once(result.map_err(Exn::from))
}

/// The cleansing helpers as jq filters on `.` (see `mappings/README.md`).
///
/// Written the way `jaq_json::funs` is (generic data kind, boxed slice of `RunPtr`s): with
/// the concrete `JustLut<Val>`, or with an array literal, rustc fails to unify the
/// higher-ranked `RunPtr` signature with the closures.
fn cleansing_natives<D: for<'a> DataT<V<'a> = Val>>() -> impl Iterator<Item = Fun<D>> {
    cleansing_run_ptrs()
        .into_vec()
        .into_iter()
        .map(jaq_core::native::run)
}

fn cleansing_run_ptrs<D: for<'a> DataT<V<'a> = Val>>() -> Box<[jaq_core::native::Filter<RunPtr<D>>]>
{
    Box::new([
        ("half_width", v(0), |cv| {
            cleanse_native(cv.1, |s| Ok(cleanse::half_width(s)))
        }),
        ("clean_text", v(0), |cv| {
            cleanse_native(cv.1, |s| Ok(cleanse::clean_text(s)))
        }),
        ("mobile", v(0), |cv| {
            cleanse_native(cv.1, cleanse::normalize_mobile)
        }),
        ("vin", v(0), |cv| {
            cleanse_native(cv.1, cleanse::normalize_vin)
        }),
        ("id_no", v(0), |cv| {
            cleanse_native(cv.1, cleanse::normalize_id_no)
        }),
        ("date", v(0), |cv| {
            cleanse_native(cv.1, |s| {
                cleanse::parse_date(s).map(|d| d.format("%Y-%m-%d").to_string())
            })
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes `files` (relative path, content) under a fresh temporary directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (rel, content) in files {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(path, content).expect("write");
        }
        dir
    }

    /// Compiles one program as mapping `m` version 1.
    fn single(code: &str) -> Mappings {
        let dir = tree(&[("m/v1.jq", code)]);
        Mappings::load(dir.path()).unwrap_or_else(|p| panic!("load failed: {p:#?}"))
    }

    fn run(code: &str, input: Value) -> Result<Value, String> {
        single(code)
            .apply("m", None, &input)
            .map(|(_, out)| out)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn load_reports_every_problem_with_file_and_position() {
        let dir = tree(&[
            ("good/v1.jq", "{a: .x}"),
            ("good/v2.jq", "{a: .x, b: 2}"),
            ("good/README.md", "not a mapping"),
            ("parse/v1.jq", "{a: .x\n| if . then 1 end end"),
            ("undefined/v1.jq", ".x\n  | no_such_fn(1)"),
            ("undefined/v2.jq", "$nope | also_missing"),
            ("lex/v1.jq", "\"unterminated"),
            ("badname/v01.jq", "."),
            ("badname/helper.jq", "."),
            ("empty/notes.txt", ""),
            ("bad id/v1.jq", "."),
            ("README.md", "top-level files are ignored"),
        ]);
        let problems = Mappings::load(dir.path()).expect_err("broken mappings must fail");
        let has = |key: &str, file_end: &str, text: &str| {
            problems.iter().any(|p| {
                p.key_path == key && p.file.ends_with(file_end) && p.message.contains(text)
            })
        };
        assert!(
            has(
                "undefined@v1",
                "undefined/v1.jq",
                "line 2, column 5: undefined filter no_such_fn/1"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                "undefined@v2",
                "undefined/v2.jq",
                "undefined variable $nope"
            ),
            "{problems:#?}"
        );
        assert!(
            has(
                "undefined@v2",
                "undefined/v2.jq",
                "undefined filter also_missing/0"
            ),
            "{problems:#?}"
        );
        assert!(has("parse@v1", "parse/v1.jq", "line 1"), "{problems:#?}");
        assert!(
            has(
                "lex@v1",
                "lex/v1.jq",
                "line 1, column 14: expected closing quote (opened at line 1, column 1)"
            ),
            "{problems:#?}"
        );
        assert!(has("badname", "badname/v01.jq", "v<N>.jq"), "{problems:#?}");
        assert!(
            has("badname", "badname/helper.jq", "v<N>.jq"),
            "{problems:#?}"
        );
        assert!(has("empty", "empty", "no v<N>.jq"), "{problems:#?}");
        assert!(has("bad id", "bad id", "mapping id"), "{problems:#?}");
        assert!(
            !problems.iter().any(|p| p.key_path.starts_with("good")),
            "{problems:#?}"
        );
        assert_eq!(problems.len(), 9, "{problems:#?}");
    }

    #[test]
    fn missing_directory_is_one_problem() {
        let dir = tree(&[]);
        let problems = Mappings::load(&dir.path().join("nope")).expect_err("missing dir");
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("cannot read directory"));
    }

    #[test]
    fn versions_latest_and_selection() {
        let dir = tree(&[
            ("b/v1.jq", "{v: 1, x}"),
            ("b/v2.jq", "{v: 2, x}"),
            ("b/v10.jq", "{v: 10, x}"),
            ("a/v3.jq", "."),
        ]);
        let m = Mappings::load(dir.path()).expect("load");
        assert_eq!(m.ids(), ["a", "b"]);
        assert_eq!(m.versions("b"), [1, 2, 10]);
        assert_eq!(m.latest("b"), Some(10));
        assert_eq!(m.latest("a"), Some(3));
        assert_eq!(m.latest("zzz"), None);
        assert!(m.versions("zzz").is_empty());

        let input = json!({"x": "y", "ignored": true});
        assert_eq!(
            m.apply("b", None, &input).expect("latest"),
            (10, json!({"v": 10, "x": "y"}))
        );
        assert_eq!(
            m.apply("b", Some(2), &input).expect("v2"),
            (2, json!({"v": 2, "x": "y"}))
        );
        let err = m.apply("b", Some(7), &input).expect_err("no v7");
        assert!(
            matches!(&err, MappingError::Unknown(s) if s == "b@7"),
            "{err}"
        );
        let err = m.apply("zzz", None, &input).expect_err("unknown id");
        assert_eq!(err.to_string(), "unknown mapping zzz");
        assert!(Mappings::empty().ids().is_empty());
    }

    #[test]
    fn exactly_one_output_is_required() {
        let none = run("empty", json!(1)).expect_err("zero outputs");
        assert!(none.contains("m@1 failed: produced no output"), "{none}");
        let none = run("select(.a)", json!({"a": false})).expect_err("filtered out");
        assert!(none.contains("produced no output"), "{none}");
        let many = run(".[]", json!([1, 2])).expect_err("two outputs");
        assert!(many.contains("produced more than one output"), "{many}");
        // Only two outputs are pulled, so an endless stream fails instead of hanging.
        let endless = run("repeat(1)", json!(null)).expect_err("endless");
        assert!(endless.contains("more than one output"), "{endless}");
    }

    #[test]
    fn runtime_errors_carry_jaqs_message() {
        let e = run(r#"error("customer object missing")"#, json!({})).expect_err("error");
        assert_eq!(e, "mapping m@1 failed: customer object missing");
        let e = run(r#"error({code: "x"})"#, json!({})).expect_err("error object");
        assert_eq!(e, r#"mapping m@1 failed: {"code":"x"}"#);
        let e = run(".a + 1", json!({"a": "text"})).expect_err("type error");
        assert_eq!(e, r#"mapping m@1 failed: cannot calculate "text" + 1"#);
        // `halt` must fail the mapping, not exit the process running these tests.
        let e = run("halt_error(3)", json!("bye")).expect_err("halt");
        assert!(e.contains("halt(3) is not allowed"), "{e}");
        // A jq error after the first output is still an error, not a success.
        let e = run(r#"1, error("late")"#, json!(null)).expect_err("late error");
        assert!(e.ends_with("late"), "{e}");
    }

    #[test]
    fn impure_builtins_are_not_available() {
        for code in ["env", "now", "$ENV", "input", "[inputs]"] {
            let dir = tree(&[("m/v1.jq", code)]);
            let problems = Mappings::load(dir.path()).expect_err(code);
            assert!(
                problems[0].message.contains("undefined"),
                "{code}: {problems:?}"
            );
        }
    }

    #[test]
    fn modules_are_not_loaded() {
        let dir = tree(&[("m/v1.jq", "include \"lib\";\n.")]);
        let problems = Mappings::load(dir.path()).expect_err("include");
        assert!(
            problems[0].message.contains("cannot load module"),
            "{problems:?}"
        );
    }

    #[test]
    fn standard_library_and_json_defs_are_available() {
        let out = run(
            r#"{
                names: (.people | map(select(.age >= 18)) | map(.name) | join(",")),
                keys: (.people[0] | keys),
                entries: ({a: 1} | to_entries),
                no_b: (.people[0] | del(.age)),
                alt: (.missing // "default"),
                up: ("abc" | ascii_upcase),
                num: ("42" | tonumber),
                re: ("A-123" | test("^[A-Z]-[0-9]+$")),
                json: ({a: 1} | tojson),
                sorted: ([3, 1, 2] | sort),
                half: (4 / 2),
                frac: (3 / 2),
                lit: 1.25
            }"#,
            json!({"people": [{"name": "a", "age": 20}, {"name": "b", "age": 9}, {"name": "c", "age": 30}]}),
        )
        .expect("stdlib");
        assert_eq!(
            out,
            json!({
                "names": "a,c",
                "keys": ["age", "name"],
                "entries": [{"key": "a", "value": 1}],
                "no_b": {"name": "a"},
                "alt": "default",
                "up": "ABC",
                "num": 42,
                "re": true,
                "json": "{\"a\":1}",
                "sorted": [1, 2, 3],
                "half": 2,
                "frac": 1.5,
                "lit": 1.25
            })
        );
    }

    #[test]
    fn fast_natives_match_jq() {
        assert_eq!(
            run(
                "[.[] | type]",
                json!([null, false, 1, 1.5, "s", [1], {"a": 1}])
            )
            .expect("type"),
            json!([
                "null", "boolean", "number", "number", "string", "array", "object"
            ])
        );
        assert_eq!(
            run("[.[] | select(. != null)]", json!([null, 0, false, ""])).expect("select"),
            json!([0, false, ""])
        );
        assert_eq!(run(".a // null", json!({})).expect("alt"), Value::Null);
        // Definitions from the standard library that use `type` still work.
        assert_eq!(
            run("[.[] | tostring]", json!([1, "a", null])).expect("tostring"),
            json!(["1", "a", "null"])
        );
        assert_eq!(
            run("[1, [2, [3]]] | flatten", json!(null)).expect("flatten"),
            json!([1, 2, 3])
        );
    }

    #[test]
    fn object_key_order_is_the_constructed_order() {
        let out = run("{z: .a, a: .z, m: 1}", json!({"a": 1, "z": 2})).expect("order");
        let keys: Vec<_> = out.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, ["z", "a", "m"]);
        // Input order survives a pass-through too (serde_json has preserve_order).
        let input = json!({"b": 1, "a": 2, "c": {"y": 1, "x": 2}});
        let out = run(".", input.clone()).expect("identity");
        assert_eq!(out.to_string(), input.to_string());
    }

    #[test]
    fn cleansing_natives() {
        let out = run(
            r#"{
                m: (.m | mobile),
                v: (.v | vin),
                i: (.i | id_no),
                d: (.d | date),
                h: (.h | half_width),
                c: (.c | clean_text),
                n: (.missing | mobile)
            }"#,
            json!({
                "m": "+86 139-1234-5678",
                "v": "lhgcv3ck9va118682",
                "i": "440104199007152511",
                "d": "2026/11/25",
                "h": "ＡＢＣ１２３",
                "c": "  雅阁　 Ａｃｃｏｒｄ  "
            }),
        )
        .expect("natives");
        assert_eq!(out["m"], "13912345678");
        assert_eq!(out["v"], "LHGCV3CK9VA118682");
        assert_eq!(out["i"], "440104199007152511");
        assert_eq!(out["d"], "2026-11-25");
        assert_eq!(out["h"], "ABC123");
        assert_eq!(out["c"], "雅阁 Accord");
        assert_eq!(out["n"], Value::Null, "null passes through");
    }

    #[test]
    fn cleansing_errors_are_jq_errors_with_the_reason() {
        let reason = cleanse::normalize_mobile("12345").expect_err("bad mobile");
        let e = run(".m | mobile", json!({"m": "12345"})).expect_err("bad mobile");
        assert_eq!(e, format!("mapping m@1 failed: {reason}"));
        // ... and catchable inside the mapping.
        let out = run(
            r#"try (.m | mobile) catch "bad: \(.)""#,
            json!({"m": "12345"}),
        )
        .expect("caught");
        assert_eq!(out, json!(format!("bad: {reason}")));
        let e = run(".m | mobile", json!({"m": 13912345678_u64})).expect_err("number");
        assert!(e.contains("cannot use 13912345678 as string"), "{e}");
        let e = run(".d | date", json!({"d": "not a date"})).expect_err("bad date");
        assert!(e.contains("m@1 failed"), "{e}");
    }

    #[test]
    fn run_tests_reports_failing_cases_with_a_diff() {
        let dir = tree(&[
            ("m/v1.jq", "{name: .n, v: 1}"),
            (
                "m/v2.jq",
                "if .n == null then error(\"n is required\") else {name: .n, v: 2} end",
            ),
            ("m/tests/ok.in.json", r#"{"n": "a"}"#),
            ("m/tests/ok.out.json", r#"{"v": 2, "name": "a"}"#),
            ("m/tests/old.in.json", r#"{"n": "a"}"#),
            ("m/tests/old.out.json", r#"{"name": "a", "v": 1}"#),
            ("m/tests/old.version", "1\n"),
            ("m/tests/err.in.json", "{}"),
            ("m/tests/err.err.txt", "n is required\n"),
            ("m/tests/wrong.in.json", r#"{"n": "b"}"#),
            (
                "m/tests/wrong.out.json",
                r#"{"name": "c", "v": 2, "extra": true}"#,
            ),
            ("m/tests/noerr.in.json", r#"{"n": "b"}"#),
            ("m/tests/noerr.err.txt", "boom"),
            ("m/tests/orphan.out.json", "{}"),
            ("m/tests/blank.in.json", "{}"),
            ("m/tests/blank.err.txt", "\n"),
            ("m/tests/typo.out.jsn", "{}"),
        ]);
        let mappings = Mappings::load(dir.path()).expect("load");
        let report = mappings.run_tests_report(dir.path());
        assert_eq!(report.cases, 6, "{report:#?}");
        let problem = |case: &str| {
            report
                .problems
                .iter()
                .find(|p| p.key_path == format!("m/tests/{case}"))
                .unwrap_or_else(|| panic!("no problem for {case}: {report:#?}"))
        };
        let wrong = problem("wrong");
        assert!(wrong.file.ends_with("m/tests/wrong.out.json"));
        assert!(
            wrong.message.contains(".name: expected \"c\", got \"b\""),
            "{}",
            wrong.message
        );
        assert!(
            wrong.message.contains(".extra: missing (expected true)"),
            "{}",
            wrong.message
        );
        assert!(
            wrong.message.contains("expected:\n{\n  \"name\": \"c\""),
            "{}",
            wrong.message
        );
        assert!(
            wrong.message.contains("got:\n{\n  \"name\": \"b\""),
            "{}",
            wrong.message
        );
        assert!(
            problem("noerr")
                .message
                .contains("expected an error containing \"boom\", but v2 succeeded")
        );
        assert!(problem("orphan").message.contains("no <case>.in.json"));
        assert!(problem("blank").message.contains("empty .err.txt"));
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file.ends_with("typo.out.jsn"))
        );
        assert_eq!(report.problems.len(), 5, "{report:#?}");
        assert_eq!(mappings.run_tests(dir.path()), report.problems);
    }

    #[test]
    fn tests_of_an_unloaded_mapping_are_reported() {
        let dir = tree(&[
            ("gone/tests/a.in.json", "{}"),
            ("gone/tests/a.out.json", "{}"),
        ]);
        let problems = Mappings::empty().run_tests(dir.path());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("mapping gone is not loaded"));
    }

    #[test]
    fn shared_across_threads() {
        let m = std::sync::Arc::new(single("{x: (.x | mobile)}"));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let (_, out) = m
                            .apply("m", None, &json!({"x": "13912345678"}))
                            .expect("apply");
                        assert_eq!(out, json!({"x": "13912345678"}));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    }

    #[test]
    fn predicates_use_jq_truthiness() {
        let p =
            Predicate::compile(r#".source_system != ("dms:" + .customer.dealer_code)"#).unwrap();
        let echo =
            serde_json::json!({"source_system": "dms:D0001", "customer": {"dealer_code": "D0001"}});
        let other = serde_json::json!({"source_system": "crm:hq:admin", "customer": {"dealer_code": "D0001"}});
        assert!(!p.test(&echo).unwrap());
        assert!(p.test(&other).unwrap());
        assert!(
            !Predicate::compile(".missing")
                .unwrap()
                .test(&other)
                .unwrap(),
            "null is false"
        );
        assert!(
            Predicate::compile(".a | mobile")
                .unwrap()
                .test(&serde_json::json!({"a": "x"}))
                .is_err()
        );
        assert!(Predicate::compile(".a ==").is_err());
    }
}

//! Problems found in a user's file, collected into one report and rendered the way rustc
//! renders them (`--> cluster.toml:14:7`, the line, a `^^^` underline, `help:`), so a user
//! fixes every mistake in one pass instead of one per run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: where it is (a `$.nodes[1].ip`-style path and, when known, a byte span in
/// the source), what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub span: Option<Range<usize>>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn warning(path: impl Into<String>, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            path: path.into(),
            span,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every diagnostic for one file, with the source text needed to show line:column.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: PathBuf,
    pub source: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn new(file: &Path, source: &str) -> Self {
        Report {
            file: file.to_path_buf(),
            source: source.to_string(),
            diagnostics: Vec::new(),
        }
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.source, offset)
    }

    /// Renders all diagnostics, in source order, followed by a one-line summary.
    pub fn render(&self, styled: bool) -> String {
        let renderer = if styled { Renderer::styled() } else { Renderer::plain() };
        let file = self.file.display().to_string();
        let mut sorted: Vec<&Diagnostic> = self.diagnostics.iter().collect();
        sorted.sort_by_key(|d| (d.span.as_ref().map_or(usize::MAX, |s| s.start), d.severity));
        let mut out = String::new();
        for d in sorted {
            let level = match d.severity {
                Severity::Error => Level::ERROR,
                Severity::Warning => Level::WARNING,
            };
            let title = format!("{} ({})", d.message, d.path);
            let mut group = match &d.span {
                Some(span) => {
                    let span = clamp(span.clone(), self.source.len());
                    level.primary_title(title).element(
                        Snippet::source(self.source.as_str())
                            .path(file.as_str())
                            .annotation(AnnotationKind::Primary.span(span).label(d.path.as_str())),
                    )
                }
                None => Group::with_title(level.primary_title(format!("{title}, {file}"))),
            };
            if let Some(help) = &d.help {
                group = group.element(Level::HELP.message(help.as_str()));
            }
            out.push_str(&renderer.render(&[group]));
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "{}: {} error{}, {} warning{}\n",
            file,
            self.errors(),
            plural(self.errors()),
            self.warnings(),
            plural(self.warnings())
        ));
        out
    }
}

/// A file with errors: carries the whole report so the caller can print it and exit 2.
#[derive(Debug, thiserror::Error)]
pub struct InvalidFile(pub Report);

impl fmt::Display for InvalidFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not valid: {} error(s)",
            self.0.file.display(),
            self.0.errors()
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn clamp(span: Range<usize>, len: usize) -> Range<usize> {
    let start = span.start.min(len);
    let end = span.end.clamp(start, len);
    start..end
}

pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..source.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
    }

    #[test]
    fn render_names_file_line_column_path_and_help() {
        let src = "[cluster]\nname = \"Bad_Name\"\n";
        let mut r = Report::new(Path::new("c.toml"), src);
        r.push(Diagnostic::error("cluster.name", Some(17..27), "not a valid name").help("use lowercase"));
        let text = r.render(false);
        assert!(text.contains("c.toml:2:8"), "{text}");
        assert!(text.contains("cluster.name"), "{text}");
        assert!(text.contains("help: use lowercase"), "{text}");
        assert!(text.contains("^^^^^^^^^^"), "{text}");
        assert!(text.ends_with("c.toml: 1 error, 0 warnings\n"), "{text}");
    }
}

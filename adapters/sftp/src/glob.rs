//! File name globs (`DEALER_*.csv`): `*` matches any run of characters, `?` exactly one, and
//! everything else itself. Small on purpose: partners' names need no more, and globset would
//! add a regex engine to the build.

/// True when `name` matches `pattern` entirely.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was and which name position it is currently stretched to: on a
    // mismatch, let that star swallow one more character (linear backtracking, no recursion).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn matches_like_a_shell() {
        assert!(glob_match("DEALER_*.csv", "DEALER_20261125.csv"));
        assert!(glob_match("DEALER_*.csv", "DEALER_.csv"));
        assert!(!glob_match("DEALER_*.csv", "DEALER_20261125.csv.ok"));
        assert!(!glob_match("DEALER_*.csv", "VEHICLE_20261125.csv"));
        assert!(glob_match(
            "CAMPRES_?????_*.csv",
            "CAMPRES_D0001_20261125.csv"
        ));
        assert!(!glob_match(
            "CAMPRES_?????_*.csv",
            "CAMPRES_D001_20261125.csv"
        ));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(!glob_match("*a*b", "xxaxxbxxc"));
        assert!(glob_match("广州*.csv", "广州_1.csv"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }
}

//! Cleansing of partner-supplied values: full-width text, mobile numbers, VINs, resident ID
//! numbers, dates and date-times. Pure functions; an `Err` carries a reason fit for a partner.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};

/// Longest input echoed back in a reason. Reasons go into response bodies and the journal, so
/// a megabyte of garbage in one field must not be copied there verbatim.
const MAX_ECHO_CHARS: usize = 64;

/// China time: offset-less date-times from partners are local wall-clock times in China.
const CHINA_OFFSET_SECS: i32 = 8 * 3600;

/// Maps full-width ASCII variants (U+FF01..U+FF5E) to ASCII and the ideographic space to ' '.
pub fn half_width(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// Half-width, trimmed, with every run of whitespace collapsed to a single space.
pub fn clean_text(s: &str) -> String {
    half_width(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Normalises a mainland China mobile number to its 11 digits.
pub fn normalize_mobile(s: &str) -> Result<String, String> {
    let digits: String = half_width(s)
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '(' | ')')))
        .collect();
    // The bare "86" prefix is only stripped when 11 digits remain, so that a genuine number
    // such as 186xxxxxxxx is never mutilated.
    let national = ["+86", "0086", "86"]
        .iter()
        .find_map(|prefix| {
            digits
                .strip_prefix(prefix)
                .filter(|rest| rest.len() == 11 && is_ascii_digits(rest))
        })
        .unwrap_or(&digits);
    if national.len() == 11 && national.starts_with('1') && is_ascii_digits(national) {
        Ok(national.to_owned())
    } else {
        Err(format!(
            "not a mainland mobile number: 11 digits starting with 1 expected, got {}",
            echo(s)
        ))
    }
}

const VIN_WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];

/// Normalises a VIN (upper case) and verifies its ISO 3779 check digit at position 9.
pub fn normalize_vin(s: &str) -> Result<String, String> {
    let vin = half_width(s).trim().to_uppercase();
    let chars: Vec<char> = vin.chars().collect();
    if chars.len() != 17 {
        return Err(format!("VIN must be 17 characters, got {}", chars.len()));
    }
    let mut sum = 0;
    for (i, (&c, weight)) in chars.iter().zip(VIN_WEIGHTS).enumerate() {
        let position = i + 1;
        if matches!(c, 'I' | 'O' | 'Q') {
            return Err(format!(
                "VIN contains forbidden letter '{c}' at position {position}"
            ));
        }
        let Some(value) = vin_value(c) else {
            return Err(format!(
                "VIN contains invalid character '{c}' at position {position}"
            ));
        };
        sum += value * weight;
    }
    let expected = match sum % 11 {
        10 => 'X',
        r => char::from_digit(r, 10).unwrap_or('?'),
    };
    if chars[8] != expected {
        return Err(format!(
            "VIN check digit mismatch: position 9 is '{}', expected '{expected}'",
            chars[8]
        ));
    }
    Ok(vin)
}

/// Transliteration of ISO 3779 / 49 CFR 565; `None` for characters a VIN may not contain.
fn vin_value(c: char) -> Option<u32> {
    Some(match c {
        '0'..='9' => c as u32 - '0' as u32,
        'A'..='H' => c as u32 - 'A' as u32 + 1,
        'J'..='N' => c as u32 - 'J' as u32 + 1,
        'P' => 7,
        'R' => 9,
        'S'..='Z' => c as u32 - 'S' as u32 + 2,
        _ => return None,
    })
}

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK_CHARS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// Normalises an 18-character GB 11643-1999 resident ID number and verifies it.
pub fn normalize_id_no(s: &str) -> Result<String, String> {
    let id = half_width(s).trim().to_uppercase();
    let chars: Vec<char> = id.chars().collect();
    if chars.len() != 18 {
        return Err(format!(
            "ID number must be 18 characters, got {}",
            chars.len()
        ));
    }
    if let Some(i) = chars[..17].iter().position(|c| !c.is_ascii_digit()) {
        return Err(format!(
            "ID number must have digits in positions 1-17, got '{}' at position {}",
            chars[i],
            i + 1
        ));
    }
    if !(chars[17].is_ascii_digit() || chars[17] == 'X') {
        return Err(format!(
            "ID number must end in a digit or X, got '{}'",
            chars[17]
        ));
    }
    // All 18 characters are ASCII from here on, so byte slicing is safe.
    let birth = &id[6..14];
    if NaiveDate::parse_from_str(birth, "%Y%m%d").is_err() {
        return Err(format!(
            "ID number birth date {birth} (positions 7-14) is not a real date"
        ));
    }
    let sum: u32 = chars[..17]
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(c, w)| c.to_digit(10).unwrap_or(0) * w)
        .sum();
    let expected = ID_CHECK_CHARS[(sum % 11) as usize];
    if chars[17] != expected {
        return Err(format!(
            "ID number check digit mismatch: position 18 is '{}', expected '{expected}'",
            chars[17]
        ));
    }
    Ok(id)
}

/// Parses a calendar date written the ways Chinese partner systems write them.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    let text = half_width(s).trim().to_owned();
    let (year, month, day) = split_date(&text).ok_or_else(|| {
        format!(
            "not a date: expected YYYY-MM-DD (or YYYY/MM/DD, YYYY.MM.DD, YYYYMMDD, YYYY年MM月DD日), got {}",
            echo(s)
        )
    })?;
    NaiveDate::from_ymd_opt(year, month, day)
        .ok_or_else(|| format!("not a real calendar date: {}", echo(s)))
}

/// Splits a date into numeric year, month and day without checking the calendar.
fn split_date(text: &str) -> Option<(i32, u32, u32)> {
    if text.len() == 8 && is_ascii_digits(text) {
        return Some((
            text[..4].parse().ok()?,
            text[4..6].parse().ok()?,
            text[6..].parse().ok()?,
        ));
    }
    let (year, month, day) = if let Some(rest) = text.strip_suffix('日') {
        let (year, rest) = rest.split_once('年')?;
        let (month, day) = rest.split_once('月')?;
        (year.trim(), month.trim(), day.trim())
    } else {
        // One separator throughout: "2026-11/25" is more likely a typo than a date.
        let sep = text.chars().find(|c| matches!(c, '-' | '/' | '.'))?;
        let mut parts = text.split(sep);
        let parts = (parts.next()?, parts.next()?, parts.next()?, parts.next());
        match parts {
            (year, month, day, None) => (year, month, day),
            _ => return None,
        }
    };
    let in_range = |part: &str, min: usize, max: usize| {
        (min..=max).contains(&part.len()) && is_ascii_digits(part)
    };
    if !(in_range(year, 4, 4) && in_range(month, 1, 2) && in_range(day, 1, 2)) {
        return None;
    }
    Some((year.parse().ok()?, month.parse().ok()?, day.parse().ok()?))
}

/// Parses an RFC 3339 date-time; a date-time without offset, or a bare date (taken as
/// midnight), is China time (+08:00).
pub fn parse_datetime(s: &str) -> Result<DateTime<FixedOffset>, String> {
    let text = half_width(s).trim().to_owned();
    if let Ok(dt) = DateTime::parse_from_rfc3339(&text) {
        return Ok(dt);
    }
    let china = FixedOffset::east_opt(CHINA_OFFSET_SECS).expect("+08:00 is a valid offset");
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(&text, format).ok())
        .or_else(|| {
            parse_date(&text)
                .ok()
                .map(|date| date.and_time(NaiveTime::MIN))
        });
    naive
        .and_then(|naive| naive.and_local_timezone(china).single())
        .ok_or_else(|| {
            format!(
                "not a date-time: expected RFC 3339 such as 2026-11-25T09:30:00+08:00, got {}",
                echo(s)
            )
        })
}

fn is_ascii_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The original input in single quotes, shortened when it is too long to echo in full.
pub(crate) fn echo(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO_CHARS {
        format!("'{s}'")
    } else {
        let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
        format!("'{head}…'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_width_maps_full_width_ascii_and_ideographic_space() {
        assert_eq!(half_width("ＡＢＣ１２３！～"), "ABC123!~");
        assert_eq!(half_width("天河区\u{3000}１０１号"), "天河区 101号");
        // Characters just outside the block stay untouched.
        assert_eq!(half_width("\u{FF00}\u{FF5F}中文"), "\u{FF00}\u{FF5F}中文");
    }

    #[test]
    fn clean_text_trims_and_collapses_whitespace() {
        assert_eq!(clean_text("  王\u{3000}\u{3000}小明 \t\n"), "王 小明");
        assert_eq!(clean_text("a  \t b"), "a b");
        assert_eq!(clean_text(" \u{3000} "), "");
    }

    #[test]
    fn mobile_prefixes_and_separators_are_stripped() {
        for input in [
            "13912345678",
            "+86 139 1234 5678",
            "0086-139-1234-5678",
            "86 13912345678",
            "(+86) 139-1234-5678",
            "＋８６　１３９１２３４５６７８",
        ] {
            assert_eq!(
                normalize_mobile(input).as_deref(),
                Ok("13912345678"),
                "{input}"
            );
        }
        assert_eq!(
            normalize_mobile("18612345678").as_deref(),
            Ok("18612345678")
        );
        assert_eq!(
            normalize_mobile("+86 186 1234 5678").as_deref(),
            Ok("18612345678")
        );
    }

    #[test]
    fn mobile_rejections_quote_the_original_input() {
        assert_eq!(
            normalize_mobile("12345"),
            Err(
                "not a mainland mobile number: 11 digits starting with 1 expected, got '12345'"
                    .to_owned()
            )
        );
        assert_eq!(
            normalize_mobile("+86 23912345678"),
            Err(
                "not a mainland mobile number: 11 digits starting with 1 expected, got '+86 23912345678'"
                    .to_owned()
            )
        );
        assert!(normalize_mobile("1391234567a").is_err());
        assert!(normalize_mobile("139123456789").is_err());
        assert!(normalize_mobile("").is_err());
        // The "+" must lead a country code we strip, not be left inside the number.
        assert!(normalize_mobile("+1 3912345678").is_err());
    }

    #[test]
    fn long_inputs_are_shortened_in_reasons() {
        let long = "9".repeat(1000);
        let reason = normalize_mobile(&long).unwrap_err();
        assert!(
            reason.ends_with(&format!("'{}…'", "9".repeat(64))),
            "{reason}"
        );
    }

    #[test]
    fn sample_vins_pass_and_the_bad_check_digit_is_named() {
        for vin in [
            "LHG0LVF20VB714970",
            "LHGCV3CK9VA118682",
            "LHGLVCWJ2RA215148",
            "LHGPHTT4XSB567790",
            "LHG37AEX2TC106933",
            "LHGC3L328RA977810",
            "1M8GDM9AXKP042788",
        ] {
            assert_eq!(normalize_vin(vin).as_deref(), Ok(vin));
        }
        assert_eq!(
            normalize_vin("LHGHL1LV0VD172367"),
            Err("VIN check digit mismatch: position 9 is '0', expected '6'".to_owned())
        );
    }

    #[test]
    fn vin_is_cleaned_and_upper_cased() {
        assert_eq!(
            normalize_vin("  ｌｈｇ0lvf20vb714970 ").as_deref(),
            Ok("LHG0LVF20VB714970")
        );
    }

    #[test]
    fn vin_reasons_name_the_problem() {
        assert_eq!(
            normalize_vin("LHG0LVF20VB71497"),
            Err("VIN must be 17 characters, got 16".to_owned())
        );
        assert_eq!(
            normalize_vin("LHG0OVF20VB714970"),
            Err("VIN contains forbidden letter 'O' at position 5".to_owned())
        );
        assert_eq!(
            normalize_vin("LHG0LVF20VB71497Q"),
            Err("VIN contains forbidden letter 'Q' at position 17".to_owned())
        );
        assert_eq!(
            normalize_vin("LHG0LVF20VB7149#0"),
            Err("VIN contains invalid character '#' at position 16".to_owned())
        );
        assert_eq!(
            normalize_vin("1M8GDM9A5KP042788"),
            Err("VIN check digit mismatch: position 9 is '5', expected 'X'".to_owned())
        );
    }

    #[test]
    fn sample_id_numbers_are_valid() {
        assert_eq!(
            normalize_id_no("440104199007152511").as_deref(),
            Ok("440104199007152511")
        );
        assert_eq!(
            normalize_id_no("440106198503021236").as_deref(),
            Ok("440106198503021236")
        );
    }

    #[test]
    fn id_number_x_check_digit_is_upper_cased() {
        // 11010519491231002X is the check-digit-X example of GB 11643.
        assert_eq!(
            normalize_id_no(" １１０１０５１９４９１２３１００２ｘ ").as_deref(),
            Ok("11010519491231002X")
        );
    }

    #[test]
    fn id_number_reasons_name_the_problem() {
        assert_eq!(
            normalize_id_no("44010419900715251"),
            Err("ID number must be 18 characters, got 17".to_owned())
        );
        assert_eq!(
            normalize_id_no("4401041990A7152511"),
            Err("ID number must have digits in positions 1-17, got 'A' at position 11".to_owned())
        );
        assert_eq!(
            normalize_id_no("44010419900715251Y"),
            Err("ID number must end in a digit or X, got 'Y'".to_owned())
        );
        assert_eq!(
            normalize_id_no("440104199002302511"),
            Err("ID number birth date 19900230 (positions 7-14) is not a real date".to_owned())
        );
        assert_eq!(
            normalize_id_no("440104199007152512"),
            Err("ID number check digit mismatch: position 18 is '2', expected '1'".to_owned())
        );
    }

    fn ymd(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn dates_in_every_accepted_format() {
        for input in [
            "2026-11-25",
            "2026/11/25",
            "2026.11.25",
            "20261125",
            "2026年11月25日",
            " ２０２６－１１－２５ ",
        ] {
            assert_eq!(parse_date(input), Ok(ymd(2026, 11, 25)), "{input}");
        }
        assert_eq!(parse_date("2026-1-5"), Ok(ymd(2026, 1, 5)));
        assert_eq!(parse_date("2026年1月5日"), Ok(ymd(2026, 1, 5)));
    }

    #[test]
    fn bad_dates_are_rejected_with_reasons() {
        assert_eq!(
            parse_date("2026-02-30"),
            Err("not a real calendar date: '2026-02-30'".to_owned())
        );
        assert_eq!(
            parse_date("25/11/2026"),
            Err("not a date: expected YYYY-MM-DD (or YYYY/MM/DD, YYYY.MM.DD, YYYYMMDD, YYYY年MM月DD日), got '25/11/2026'".to_owned())
        );
        for input in [
            "2026-11/25",
            "2026-11-25-1",
            "2026-011-25",
            "20261325",
            "",
            "tomorrow",
        ] {
            assert!(parse_date(input).is_err(), "{input}");
        }
    }

    #[test]
    fn datetimes_keep_their_offset_or_default_to_china_time() {
        let rfc = parse_datetime("2026-11-25T09:30:00+08:00").unwrap();
        assert_eq!(rfc.to_rfc3339(), "2026-11-25T09:30:00+08:00");
        let utc = parse_datetime("2026-11-25T01:30:00Z").unwrap();
        assert_eq!(utc.offset().local_minus_utc(), 0);
        assert_eq!(utc, rfc);
        for input in [
            "2026-11-25 09:30:00",
            "2026-11-25T09:30:00",
            "２０２６-11-25 09:30:00",
        ] {
            assert_eq!(
                parse_datetime(input).unwrap().to_rfc3339(),
                "2026-11-25T09:30:00+08:00",
                "{input}"
            );
        }
        assert_eq!(
            parse_datetime("2026-11-25 09:30:00.250")
                .unwrap()
                .to_rfc3339(),
            "2026-11-25T09:30:00.250+08:00"
        );
        assert_eq!(
            parse_datetime("2026/11/25").unwrap().to_rfc3339(),
            "2026-11-25T00:00:00+08:00"
        );
    }

    #[test]
    fn bad_datetimes_are_rejected_with_reasons() {
        assert_eq!(
            parse_datetime("2026-11-25 25:00:00"),
            Err("not a date-time: expected RFC 3339 such as 2026-11-25T09:30:00+08:00, got '2026-11-25 25:00:00'".to_owned())
        );
        assert!(parse_datetime("yesterday").is_err());
        assert!(parse_datetime("").is_err());
    }
}

//! OSM's batch files as the benchmarks generate them: the GB18030 dealer master file and the
//! vehicle file, with valid VINs, dealer codes and owners, written the way OSM drops them (data
//! file, then its `.ok` marker).

use std::io::Write;
use std::path::Path;

/// The header of OSM's vehicle file (INTERFACES §4, IF-02).
const VEHICLE_HEADER: &str = "vin,brand,model,model_year,color,plate_no,engine_no,dealer_code,sales_date,owner_name,owner_mobile,owner_id_no\n";

/// Dealer code of dealer `i` (0-based): `D0001`, `D0002`, …
pub(crate) fn dealer(i: usize) -> String {
    format!("D{:04}", i + 1)
}

/// A valid VIN (check digit included) unique for `i` below 10,000,000.
pub(crate) fn vin_of(i: usize) -> String {
    let mut v: [u8; 17] = format!("LVHRU1840S{:07}", i % 10_000_000)
        .into_bytes()
        .try_into()
        .expect("17 characters");
    v[8] = crate::vin::vin_check(&v);
    String::from_utf8(v.to_vec()).expect("ASCII")
}

/// Writes OSM's dealer file of `n` dealers (GB18030) and its `.ok` marker; dealer `i` is in
/// `cities[i % cities.len()]` (province, city).
pub(crate) fn write_dealers(path: &Path, n: usize, cities: &[(&str, &str)]) {
    let mut text =
        String::from("dealer_code,dealer_name,region,province,city,address,phone,status\n");
    for i in 0..n {
        let (province, city) = cities[i % cities.len()];
        text.push_str(&format!(
            "{},{city}第{}本田特约店,华南,{province},{city},{city}大道{}号,020-1234{:04},active\n",
            dealer(i),
            i + 1,
            i + 1,
            i
        ));
    }
    let (gb, _, _) = encoding_rs::GB18030.encode(&text);
    std::fs::write(path, &gb).expect("dealer file");
    mark_ready(path);
}

/// Writes OSM's vehicle file of `n` vehicles sold by `dealers` dealers, each with its own owner
/// (mobile `136…`), streamed to disk so a million rows cost the writer no memory; then `.ok`.
pub(crate) fn write_vehicles(path: &Path, n: usize, dealers: usize) {
    let file = std::fs::File::create(path).expect("vehicle file");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(VEHICLE_HEADER.as_bytes()).expect("write");
    for i in 0..n {
        writeln!(
            out,
            "{},Honda,雅阁 Accord,2026,珍珠白,粤A·{:05},L15B{i:07},{},2026-11-20,客户{i},136{i:08},",
            vin_of(i),
            i % 100_000,
            dealer(i % dealers)
        )
        .expect("write");
    }
    out.flush().expect("flush");
    mark_ready(path);
}

/// The `.ok` marker OSM writes after the data file: the poller takes the file only then.
fn mark_ready(path: &Path) {
    let mut ok = path.as_os_str().to_owned();
    ok.push(".ok");
    std::fs::write(ok, b"").expect(".ok marker");
}

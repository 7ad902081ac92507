//! The .NET properties keyhole models (issue 11 item 3), as `keyhole run` prints them: DateTime
//! (Year, Month, Day, ..., Ticks, Date, TimeOfDay, Kind), String (Length), TimeSpan (Days, ...,
//! TotalSeconds), reached by Select-Object, Where-Object, Sort-Object, Measure-Object,
//! Format-Table and Get-Member, in a copy of the shipped configuration whose Diagnostics role
//! also grants Get-Date, Write-Output, Get-Member and Format-List.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::shipped;

use chrono::Datelike;
use shipped::{keyhole, shipped_copy};

struct Run {
    code: i32,
    out: String,
    err: String,
}

fn with_object_cmdlets() -> tempfile::TempDir {
    let d = shipped_copy();
    let p = d.path().join("role-capabilities/Diagnostics.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.contains("\"Measure-Object\","),
        "Diagnostics.toml changed shape"
    );
    std::fs::write(
        &p,
        text.replacen(
            "\"Measure-Object\",",
            "\"Measure-Object\", \"Get-Date\", \"Write-Output\", \"Get-Member\", \"Format-List\",",
            1,
        ),
    )
    .unwrap();
    d
}

fn run(d: &tempfile::TempDir, line: &str) -> Run {
    let (code, out, err) = keyhole(
        d.path(),
        &[
            "run",
            "--endpoint",
            "Helpdesk",
            "--user",
            "alice",
            "--group",
            "helpdesk",
        ],
        Some(line),
    );
    assert_eq!(code, 0, "{line}: exit {code}\n{out}{err}");
    Run { code, out, err }
}

/// Non-empty output lines, right-trimmed.
fn lines(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The `Name : value` lines of a list.
fn list_value(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(" : ").or_else(|| l.split_once(" :"))?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

#[test]
fn get_date_select_year_prints_the_year() {
    let d = with_object_cmdlets();
    let before = chrono::Local::now().year();
    let r = run(&d, "Get-Date | Select-Object -Property Year");
    let after = chrono::Local::now().year();
    let l = lines(&r.out);
    assert_eq!(l.len(), 3, "{}", r.out);
    assert_eq!(l[0], "Year");
    assert_eq!(l[1], "----");
    let year: i32 = l[2].trim().parse().unwrap();
    assert!(year == before || year == after, "{}", r.out);

    let r = run(
        &d,
        "Get-Date -Date 2024-02-29T13:14:15 | Select-Object -Property Year",
    );
    assert_eq!(lines(&r.out), ["Year", "----", "2024"], "{}", r.out);
}

#[test]
fn datetime_properties_as_dotnet_has_them() {
    let d = with_object_cmdlets();
    let r = run(
        &d,
        "Get-Date -Date 2024-02-29T13:14:15 | Select-Object Year,Month,Day,Hour,Minute,Second,Millisecond,DayOfWeek,DayOfYear,Ticks,Date,TimeOfDay,Kind",
    );
    for (name, want) in [
        ("Year", "2024"),
        ("Month", "2"),
        ("Day", "29"),
        ("Hour", "13"),
        ("Minute", "14"),
        ("Second", "15"),
        ("Millisecond", "0"),
        ("DayOfWeek", "Thursday"),
        ("DayOfYear", "60"),
        // [datetime]'2024-02-29T13:14:15' | % Ticks
        ("Ticks", "638448092550000000"),
        ("Date", "02/29/2024 00:00:00"),
        ("TimeOfDay", "13:14:15"),
        ("Kind", "Local"),
    ] {
        assert_eq!(list_value(&r.out, name), want, "{name}:\n{}", r.out);
    }
    // Every modelled property, wildcards included.
    let r = run(&d, "Get-Date | Select-Object Day*");
    let l = lines(&r.out);
    assert_eq!(
        l[0].split_whitespace().collect::<Vec<_>>(),
        ["Day", "DayOfWeek", "DayOfYear"],
        "{}",
        r.out
    );
    let r = run(&d, "Get-Date | Get-Member");
    for m in ["Year", "Month", "Ticks", "TimeOfDay", "DayOfWeek", "Kind"] {
        assert!(
            r.out
                .lines()
                .any(|l| l.starts_with(m) && l.contains("Property")),
            "{m}:\n{}",
            r.out
        );
    }
}

#[test]
fn string_length_filters_sorts_and_measures() {
    let d = with_object_cmdlets();
    let r = run(&d, "Write-Output a,bb | Where-Object Length -gt 1");
    assert_eq!(lines(&r.out), ["bb"], "{}{}", r.out, r.err);
    let r = run(&d, "Write-Output bb,a,ccc | Sort-Object Length");
    assert_eq!(lines(&r.out), ["a", "bb", "ccc"], "{}", r.out);
    let r = run(
        &d,
        "Write-Output a,bb | Measure-Object -Property Length -Sum",
    );
    assert_eq!(list_value(&r.out, "Sum"), "3", "{}", r.out);
    let r = run(&d, "Write-Output a,bb | Select-Object Length");
    let cells: Vec<String> = lines(&r.out).iter().map(|l| l.trim().to_string()).collect();
    assert_eq!(cells, ["Length", "------", "1", "2"], "{}", r.out);
    assert_eq!(r.code, 0);
}

#[test]
fn timespan_shows_as_powershell_lists_it() {
    let d = with_object_cmdlets();
    // Get-Uptime's TimeSpan: PowerShell's default view is a list of its properties.
    let r = run(&d, "Get-Uptime");
    let names: Vec<String> = lines(&r.out)
        .iter()
        .map(|l| l.split(':').next().unwrap().trim().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "Days",
            "Hours",
            "Minutes",
            "Seconds",
            "Milliseconds",
            "Ticks",
            "TotalDays",
            "TotalHours",
            "TotalMinutes",
            "TotalSeconds",
            "TotalMilliseconds"
        ],
        "{}",
        r.out
    );
    let secs: f64 = list_value(&r.out, "TotalSeconds").parse().unwrap();
    assert!(secs > 0.0, "{}", r.out);
    let r = run(&d, "Get-Uptime | Select-Object Days,TotalSeconds");
    assert_eq!(
        lines(&r.out)[0].split_whitespace().collect::<Vec<_>>(),
        ["Days", "TotalSeconds"],
        "{}",
        r.out
    );
}

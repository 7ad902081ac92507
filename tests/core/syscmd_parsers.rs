//! Property tests: the system cmdlets' parsers of /proc files and program output never panic,
//! whatever the text, and keep their documented invariants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::commands::{journal, network, processes, services, system};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stat_parser_never_panics(s in ".{0,300}") {
        if let Some(p) = processes::parse_stat(&s) {
            // comm is what lies between the first '(' and the last ')'.
            let wrapped = format!("({})", p.comm);
            prop_assert!(s.contains(&wrapped));
        }
    }

    #[test]
    fn stat_parser_keeps_any_comm(comm in "[ -~]{0,15}", pid in 1i64..4_000_000) {
        let line = format!("{pid} ({comm}) S 1 2 3 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 99 4096 10 0");
        let p = processes::parse_stat(&line).unwrap();
        prop_assert_eq!(p.pid, pid);
        prop_assert_eq!(p.comm, comm);
        prop_assert_eq!((p.utime, p.stime, p.start_ticks), (7, 8, 99));
    }

    #[test]
    fn status_and_auxv_never_panic(s in ".{0,300}", b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = processes::parse_status(&s);
        let _ = processes::parse_btime(&s);
        let _ = processes::parse_auxv_clktck(&b);
    }

    #[test]
    fn mount_parsers_never_panic(s in ".{0,300}") {
        let _ = system::parse_mountinfo(&s);
        let _ = system::unescape_mount(&s);
        let _ = system::parse_uptime(&s);
    }

    #[test]
    fn mount_escape_round_trip(path in "/[a-z \\t\\\\]{0,20}") {
        let escaped: String = path.chars().map(|c| match c {
            ' ' => "\\040".to_string(),
            '\t' => "\\011".to_string(),
            '\\' => "\\134".to_string(),
            c => c.to_string(),
        }).collect();
        let line = format!("36 35 98:0 / {escaped} rw,noatime - ext4 /dev/sda1 rw");
        let m = system::parse_mountinfo_line(&line).unwrap();
        prop_assert_eq!(m.mount_point, path);
    }

    #[test]
    fn tcp_parser_never_panics(s in ".{0,300}") {
        let _ = network::parse_tcp_line(&s);
        let _ = network::parse_hex_addr(&s);
    }

    #[test]
    fn tcp_ipv4_round_trip(a in any::<[u8; 4]>(), port in any::<u16>(), st in 1u8..=12) {
        let hex = format!("{:08X}", u32::from_ne_bytes(a));
        let line = format!("   0: {hex}:{port:04X} 00000000:0000 {st:02X} 00000000:00000000 00:00000000 00000000  1000 0 4242 1");
        let e = network::parse_tcp_line(&line).unwrap();
        prop_assert_eq!(e.local, std::net::Ipv4Addr::from(a).to_string());
        prop_assert_eq!(e.local_port, port);
        prop_assert_eq!(e.state, st);
        prop_assert_eq!(e.inode, 4242);
    }

    #[test]
    fn tcp_ipv6_round_trip(a in any::<[u8; 16]>()) {
        let hex: String = a.chunks(4).map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))).collect();
        prop_assert_eq!(network::parse_hex_addr(&hex).unwrap(), std::net::Ipv6Addr::from(a).to_string());
    }

    #[test]
    fn program_output_parsers_never_panic(s in ".{0,400}") {
        let _ = services::parse_show(&s);
        let _ = services::parse_unit_list(&s);
        let _ = network::parse_ping(&s);
        let _ = journal::parse_entry(&s);
    }

    #[test]
    fn journal_message_bytes(bytes in proptest::collection::vec(any::<u8>(), 1..100)) {
        let line = serde_json::json!({"MESSAGE": bytes.clone(), "PRIORITY": "4"}).to_string();
        let e = journal::parse_entry(&line).unwrap();
        prop_assert_eq!(e.message, String::from_utf8_lossy(&bytes).into_owned());
        prop_assert_eq!(e.priority, Some(4));
    }
}

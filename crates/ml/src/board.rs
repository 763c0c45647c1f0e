//! The emulated boards a firmware runs on (SPEC.md, "`firmware`"): QEMU's MPS2/MPS3 machines,
//! their cores and memory maps, the board support sources (`crates/ml/runtime/board/`), the
//! flash and RAM figures of a linked ELF, and the results a firmware run writes through
//! semihosting. Nothing here knows about models.

use object::{Object, ObjectSection, ObjectSymbol};

/// One QEMU board.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Board {
    /// The QEMU machine (`-machine`), also its name in device profiles.
    pub machine: &'static str,
    /// QEMU's `-cpu` and gcc's `-mcpu`.
    pub cpu: &'static str,
    /// The macro board.c selects the board's timer with.
    pub define: &'static str,
    /// Its linker script.
    pub linker_script: &'static str,
    /// The region the harness's I/O buffers live in (not the model's RAM).
    pub io_bytes: u64,
    /// Instructions per timer tick under `-icount shift=0` (1 ns per instruction): 40 for the
    /// 25 MHz CMSDK timer, 31.25 for the SSE-300's 32 MHz system counter.
    pub tick_instructions: f64,
}

pub const BOARDS: &[Board] = &[
    Board {
        machine: "mps2-an500",
        cpu: "cortex-m7",
        define: "EB_BOARD_AN500",
        linker_script: "mps2-an500.ld",
        io_bytes: 16 << 20,
        tick_instructions: 40.0,
    },
    Board {
        machine: "mps2-an386",
        cpu: "cortex-m4",
        define: "EB_BOARD_AN386",
        linker_script: "mps2-an386.ld",
        io_bytes: 16 << 20,
        tick_instructions: 40.0,
    },
    Board {
        machine: "mps3-an547",
        cpu: "cortex-m55",
        define: "EB_BOARD_AN547",
        linker_script: "mps3-an547.ld",
        io_bytes: 16 << 20,
        tick_instructions: 31.25,
    },
];

/// The default board: QEMU's Cortex-M7.
pub const DEFAULT_BOARD: &str = "mps2-an500";

pub fn find(machine: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|b| b.machine == machine)
}

pub fn names() -> Vec<&'static str> {
    BOARDS.iter().map(|b| b.machine).collect()
}

/// The board support sources: startup code, semihosting and timer, linker scripts, and the
/// harness that feeds samples through the model.
pub const SUPPORT_FILES: &[(&str, &str)] = &[
    ("board.h", include_str!("../runtime/board/board.h")),
    ("board.c", include_str!("../runtime/board/board.c")),
    ("startup.S", include_str!("../runtime/board/startup.S")),
    ("fw_main.c", include_str!("../runtime/board/fw_main.c")),
    (
        "mps2-an500.ld",
        include_str!("../runtime/board/mps2-an500.ld"),
    ),
    (
        "mps2-an386.ld",
        include_str!("../runtime/board/mps2-an386.ld"),
    ),
    (
        "mps3-an547.ld",
        include_str!("../runtime/board/mps3-an547.ld"),
    ),
];

/// The flash and RAM a linked firmware takes, from its section headers and symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ElfSizes {
    pub text: u64,
    pub rodata: u64,
    /// The initial values of `.data`, stored in flash and copied to RAM at reset.
    pub data: u64,
    /// Zero-initialized RAM, the arena included (the harness's I/O buffers are not: they sit
    /// in the board's external RAM and are no part of what ships).
    pub bss: u64,
    /// The size of the `eb_arena` symbol.
    pub arena: u64,
}

impl ElfSizes {
    pub fn flash(&self) -> u64 {
        self.text + self.rodata + self.data
    }
}

/// Reads the section sizes of a linked ELF.
pub fn elf_sizes(bytes: &[u8]) -> Result<ElfSizes, String> {
    let file = object::File::parse(bytes).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut s = ElfSizes {
        text: 0,
        rodata: 0,
        data: 0,
        bss: 0,
        arena: 0,
    };
    for section in file.sections() {
        let name = section.name().unwrap_or("");
        let size = section.size();
        match name {
            ".text" => s.text += size,
            ".rodata" | ".ARM.exidx" => s.rodata += size,
            ".data" => s.data += size,
            ".bss" => s.bss += size,
            _ => {}
        }
    }
    s.arena = file
        .symbols()
        .find(|sym| sym.name() == Ok("eb_arena"))
        .map(|sym| sym.size())
        .ok_or("the ELF has no `eb_arena` symbol")?;
    Ok(s)
}

/// What `fw_main.c` writes to `stats.bin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    pub stack_peak: u64,
    pub timer_overhead: u64,
    /// Instructions of each inference.
    pub instructions: Vec<u64>,
}

/// Parses `stats.bin` for `samples` samples.
pub fn parse_stats(bytes: &[u8], samples: usize) -> Result<RunStats, String> {
    let want = 4 * (3 + 2 * samples);
    if bytes.len() != want {
        return Err(format!(
            "stats.bin has {} bytes, {want} expected",
            bytes.len()
        ));
    }
    let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if word(0) as usize != samples {
        return Err(format!(
            "the firmware ran {} samples, not {samples}",
            word(0)
        ));
    }
    let instructions = (0..samples)
        .map(|s| u64::from(word(3 + 2 * s)) | (u64::from(word(4 + 2 * s)) << 32))
        .collect();
    Ok(RunStats {
        stack_peak: u64::from(word(1)),
        timer_overhead: u64::from(word(2)),
        instructions,
    })
}

/// The profile firmware's `nodes.bin`: one little-endian u32 of instructions per node.
pub fn parse_node_profile(bytes: &[u8], nodes: usize) -> Result<Vec<u64>, String> {
    if bytes.len() != 4 * nodes {
        return Err(format!(
            "nodes.bin has {} bytes, {} expected ({nodes} nodes)",
            bytes.len(),
            4 * nodes
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_bad_lengths() {
        let mut b = Vec::new();
        for w in [2u32, 512, 80, 1000, 0, 7, 1] {
            b.extend(w.to_le_bytes());
        }
        let s = parse_stats(&b, 2).unwrap();
        assert_eq!(s.stack_peak, 512);
        assert_eq!(s.timer_overhead, 80);
        assert_eq!(s.instructions, vec![1000, 7 | (1 << 32)]);
        assert!(parse_stats(&b, 3).is_err());
        assert!(parse_stats(&b[..8], 2).is_err());
    }

    #[test]
    fn node_profile_reads_one_word_a_node() {
        let b: Vec<u8> = [40u32, 0, 123_456]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(parse_node_profile(&b, 3).unwrap(), vec![40, 0, 123_456]);
        let e = parse_node_profile(&b, 4).unwrap_err();
        assert_eq!(e, "nodes.bin has 12 bytes, 16 expected (4 nodes)");
    }

    #[test]
    fn every_board_has_its_linker_script() {
        for b in BOARDS {
            assert!(
                SUPPORT_FILES.iter().any(|(n, _)| *n == b.linker_script),
                "{}",
                b.machine
            );
        }
        assert!(find(DEFAULT_BOARD).is_some());
        assert!(elf_sizes(b"not an elf").is_err());
    }
}

//! The poll planner: tags with the same poll interval → the fewest read requests.
//!
//! Invariants of every plan:
//! - A request reads one unit and one table, at most [`Limits::max_registers`] registers
//!   (Modbus Application Protocol V1.1b3, 6.3/6.4: 1..=125) or [`Limits::max_bits`] bits
//!   (6.1/6.2: 1..=2000).
//! - Every tag given is read by exactly one request, which covers all of its registers.
//! - Two tags share a request only if the unused addresses between them number at most
//!   `max_gap` registers (bit tables: `16 · max_gap` bits, the same bytes on the wire).
//! - No request joining several tags touches a [`Blocked`] range (a quarantined tag, or a gap
//!   the device refused). A tag that itself overlaps a blocked range is read alone.
//! - Within these rules the count is minimal: tags are sorted by address and each request is
//!   extended greedily, which is optimal for intervals on a line (a request that stops early
//!   can only push the next start to the right).

use std::collections::BTreeMap;

use crate::config::tagmap::Table;
#[cfg(test)]
use crate::mapping::plan::TagPlan;
use crate::mapping::plan::{ModbusAddress, ModbusPlan, TagAddress, TagMapPlan};

/// Modbus Application Protocol V1.1b3, 6.3/6.4: 1..=125 registers per read.
pub const MAX_REGISTERS: u16 = 125;
/// Modbus Application Protocol V1.1b3, 6.1/6.2: 1..=2000 coils or discrete inputs per read.
pub const MAX_BITS: u16 = 2000;

/// How large and how sparse one request may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registers per read, 1..=125 (some devices accept fewer).
    pub max_registers: u16,
    /// Bits per read, 1..=2000.
    pub max_bits: u16,
    /// Unused registers one read may span to join two tags.
    pub max_gap: u16,
}

impl Limits {
    /// The protocol's limits and the tag map's `max_gap`.
    pub fn for_plan(plan: &ModbusPlan) -> Limits {
        Limits {
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
            max_gap: plan.max_gap,
        }
    }

    fn max_count(&self, table: Table) -> u32 {
        if table.is_bits() {
            u32::from(self.max_bits.clamp(1, MAX_BITS))
        } else {
            u32::from(self.max_registers.clamp(1, MAX_REGISTERS))
        }
    }

    fn max_gap(&self, table: Table) -> u32 {
        if table.is_bits() {
            u32::from(self.max_gap) * 16
        } else {
            u32::from(self.max_gap)
        }
    }
}

/// One read: `count` items of `table` from `address` on `unit`, and the tags it serves
/// (indexes into the tag map's tags), sorted by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub unit: u8,
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub tags: Vec<usize>,
}

/// Address ranges no joined read may touch, per unit and table: `[start, end)`. An empty range
/// (`start == end`) is a cut: no read may hold addresses on both sides of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocked {
    ranges: BTreeMap<(u8, Table), Vec<(u32, u32)>>,
}

impl Blocked {
    /// Blocks `[start, end)` of `table` on `unit`.
    pub fn add(&mut self, unit: u8, table: Table, start: u32, end: u32) {
        let list = self.ranges.entry((unit, table)).or_default();
        if !list.contains(&(start, end)) {
            list.push((start, end));
        }
    }

    /// Unblocks exactly `[start, end)`.
    pub fn remove(&mut self, unit: u8, table: Table, start: u32, end: u32) {
        if let Some(list) = self.ranges.get_mut(&(unit, table)) {
            list.retain(|r| *r != (start, end));
        }
    }

    /// Whether a read of `[start, end)` touches (or straddles) a blocked range.
    pub fn hits(&self, unit: u8, table: Table, start: u32, end: u32) -> bool {
        self.ranges.get(&(unit, table)).is_some_and(|list| {
            list.iter().any(|&(s, e)| {
                if s == e {
                    start < s && end > s
                } else {
                    start < e && end > s
                }
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.values().all(Vec::is_empty)
    }
}

/// `[start, end)` of a tag.
pub fn span(a: &ModbusAddress) -> (u32, u32) {
    let start = u32::from(a.address);
    (start, start + u32::from(a.count()))
}

/// Plans the reads of `tags` (index, address), which share one poll interval.
pub fn plan(
    tags: &[(usize, ModbusAddress)],
    limits: Limits,
    blocked: &Blocked,
) -> Vec<ReadRequest> {
    let mut sorted: Vec<&(usize, ModbusAddress)> = tags.iter().collect();
    sorted.sort_by_key(|(i, a)| (a.unit, a.table, span(a), *i));
    let mut out: Vec<ReadRequest> = Vec::new();
    // The request being built: its first tag's key, start and end.
    let mut open: Option<(u8, Table, u32, u32, Vec<usize>)> = None;
    for (index, a) in sorted {
        let (start, end) = span(a);
        if let Some((unit, table, s, e, list)) = &mut open {
            let joinable = *unit == a.unit
                && *table == a.table
                && start <= *e + limits.max_gap(a.table)
                && end.max(*e) - *s <= limits.max_count(a.table)
                && !blocked.hits(a.unit, a.table, *s, end.max(*e));
            if joinable {
                *e = end.max(*e);
                list.push(*index);
                continue;
            }
        }
        if let Some(done) = open.take() {
            out.push(finish(done));
        }
        open = Some((a.unit, a.table, start, end, vec![*index]));
    }
    if let Some(done) = open {
        out.push(finish(done));
    }
    out
}

fn finish((unit, table, start, end, tags): (u8, Table, u32, u32, Vec<usize>)) -> ReadRequest {
    ReadRequest {
        unit,
        table,
        // Addresses were u16 and a tag ends at most at 65536 (checked when compiling).
        address: start as u16,
        count: (end - start) as u16,
        tags,
    }
}

/// Splits the tags of a tag map over `n` connections: each interval's reads, as planned, in
/// `n` contiguous runs, so every connection's own plan is the same reads. Returns `n` lists of
/// tag indexes (some empty when there are fewer reads than connections).
pub fn share(plan: &TagMapPlan, limits: Limits, n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    let mut shares = vec![Vec::new(); n];
    let mut groups: BTreeMap<std::time::Duration, Vec<(usize, ModbusAddress)>> = BTreeMap::new();
    for (i, tag) in plan.tags.iter().enumerate() {
        if let TagAddress::Modbus(a) = &tag.address {
            groups.entry(tag.interval).or_default().push((i, *a));
        }
    }
    for tags in groups.values() {
        let reads = self::plan(tags, limits, &Blocked::default());
        let len = reads.len();
        for (k, share) in shares.iter_mut().enumerate() {
            for read in &reads[k * len / n..(k + 1) * len / n] {
                share.extend_from_slice(&read.tags);
            }
        }
    }
    shares
}

/// One line of `tagbridge check`: requests per cycle, per unit and interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleSummary {
    pub unit: u8,
    pub interval: std::time::Duration,
    pub tags: usize,
    pub requests: usize,
}

/// What the source will send per cycle for a tag map, before any quarantine.
pub fn summarize(plan: &TagMapPlan, limits: Limits) -> Vec<CycleSummary> {
    let mut groups: BTreeMap<(u8, std::time::Duration), Vec<(usize, ModbusAddress)>> =
        BTreeMap::new();
    for (i, tag) in plan.tags.iter().enumerate() {
        if let TagAddress::Modbus(a) = &tag.address {
            groups
                .entry((a.unit, tag.interval))
                .or_default()
                .push((i, *a));
        }
    }
    groups
        .into_iter()
        .map(|((unit, interval), tags)| CycleSummary {
            unit,
            interval,
            tags: tags.len(),
            requests: self::plan(&tags, limits, &Blocked::default()).len(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tagmap::{DataType, WordOrder};
    use proptest::prelude::*;

    fn reg(address: u16, data_type: DataType) -> ModbusAddress {
        ModbusAddress {
            unit: 1,
            table: Table::HoldingRegister,
            address,
            data_type,
            order: WordOrder::ABCD,
            bit: None,
            length: 1,
        }
    }

    fn limits(max_gap: u16) -> Limits {
        Limits {
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
            max_gap,
        }
    }

    fn indexed(tags: Vec<ModbusAddress>) -> Vec<(usize, ModbusAddress)> {
        tags.into_iter().enumerate().collect()
    }

    #[test]
    fn contiguous_tags_fill_125_registers() {
        let tags = indexed((0..1000).map(|a| reg(a, DataType::Uint16)).collect());
        let p = plan(&tags, limits(0), &Blocked::default());
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|r| r.count == 125));
        // float32 cannot straddle two reads: 62 per read.
        let tags = indexed((0..100).map(|i| reg(i * 2, DataType::Float32)).collect());
        let p = plan(&tags, limits(0), &Blocked::default());
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].count, p[1].count), (124, 76));
    }

    #[test]
    fn gaps_split_and_tables_units_never_mix() {
        let mut tags = vec![
            reg(0, DataType::Uint16),
            reg(5, DataType::Uint16),
            reg(20, DataType::Uint16),
        ];
        let mut other_unit = reg(1, DataType::Uint16);
        other_unit.unit = 2;
        let mut input = reg(2, DataType::Uint16);
        input.table = Table::InputRegister;
        tags.push(other_unit);
        tags.push(input);
        let p = plan(&indexed(tags), limits(8), &Blocked::default());
        let shape: Vec<_> = p
            .iter()
            .map(|r| (r.unit, r.table, r.address, r.count, r.tags.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, Table::InputRegister, 2, 1, vec![4]),
                (1, Table::HoldingRegister, 0, 6, vec![0, 1]),
                (1, Table::HoldingRegister, 20, 1, vec![2]),
                (2, Table::HoldingRegister, 1, 1, vec![3]),
            ]
        );
    }

    #[test]
    fn blocked_ranges_and_cuts_are_never_spanned() {
        let tags = indexed((0..10).map(|a| reg(a, DataType::Uint16)).collect());
        let mut blocked = Blocked::default();
        blocked.add(1, Table::HoldingRegister, 4, 5); // a quarantined tag at 4
        blocked.add(1, Table::HoldingRegister, 8, 8); // a cut between 7 and 8
        let without_4: Vec<_> = tags.iter().filter(|(i, _)| *i != 4).cloned().collect();
        let p = plan(&without_4, limits(8), &blocked);
        let ranges: Vec<_> = p.iter().map(|r| (r.address, r.count)).collect();
        assert_eq!(ranges, vec![(0, 4), (5, 3), (8, 2)]);
    }

    #[test]
    fn packed_bits_share_one_register() {
        let mut a = reg(10, DataType::Bool);
        a.bit = Some(0);
        let mut b = a;
        b.bit = Some(7);
        let p = plan(&indexed(vec![a, b]), limits(0), &Blocked::default());
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].address, p[0].count), (10, 1));
    }

    #[test]
    fn connections_share_contiguous_runs_of_reads() {
        let tags: Vec<TagPlan> = (0..500u16)
            .map(|a| TagPlan {
                sensor_id: format!("t{a}").into(),
                address: TagAddress::Modbus(reg(a, DataType::Uint16)),
                interval: std::time::Duration::from_secs(1),
                transform: Default::default(),
                extra: "".into(),
                pos: crate::config::Pos { line: 1, col: 1 },
            })
            .collect();
        let plan = TagMapPlan {
            path: "x.yaml".into(),
            source: crate::mapping::SourcePlan::Modbus(ModbusPlan {
                transport: crate::mapping::plan::ModbusTransport::Tcp("h:1".into()),
                timeout: std::time::Duration::from_secs(1),
                max_gap: 8,
                connections: std::num::NonZeroU8::MIN,
            }),
            tags,
            disabled: 0,
        };
        // 500 registers = 4 reads over 3 connections: 1, 1 and 2 reads.
        let shares = share(&plan, limits(8), 3);
        let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![125, 125, 250]);
        let mut all: Vec<usize> = shares.concat();
        all.sort_unstable();
        assert_eq!(all, (0..500).collect::<Vec<_>>());
        assert_eq!(share(&plan, limits(8), 1)[0].len(), 500);
    }

    proptest! {
        /// Against the simple model "one read per tag": every tag is covered by exactly one
        /// read, reads respect the limits, and no read is larger than needed.
        #[test]
        fn coalesced_reads_cover_what_single_reads_would(
            specs in proptest::collection::vec((0u8..2, 0u16..400, 0usize..5), 1..80),
            max_gap in 0u16..20,
        ) {
            let types = [DataType::Uint16, DataType::Int32, DataType::Float64, DataType::String, DataType::Bool];
            let mut seen = std::collections::HashSet::new();
            let mut tags = Vec::new();
            for (table, address, t) in specs {
                let table = if table == 0 { Table::HoldingRegister } else { Table::Coil };
                let data_type = if table.is_bits() { DataType::Bool } else { types[t % 4] };
                let mut a = reg(address, data_type);
                a.table = table;
                if data_type == DataType::String { a.length = 1 + (address % 7); }
                if seen.insert((table, address)) { tags.push(a); }
            }
            let tags = indexed(tags);
            let p = plan(&tags, limits(max_gap), &Blocked::default());
            let mut covered = vec![0; tags.len()];
            for r in &p {
                let max = if r.table.is_bits() { 2000 } else { 125 };
                prop_assert!(r.count <= max);
                let (rs, re) = (u32::from(r.address), u32::from(r.address) + u32::from(r.count));
                let mut lo = u32::MAX;
                let mut hi = 0;
                for &i in &r.tags {
                    covered[i] += 1;
                    let (s, e) = span(&tags[i].1);
                    prop_assert_eq!(tags[i].1.table, r.table);
                    prop_assert!(s >= rs && e <= re);
                    lo = lo.min(s);
                    hi = hi.max(e);
                }
                prop_assert_eq!((lo, hi), (rs, re));
            }
            prop_assert!(covered.iter().all(|c| *c == 1));
            prop_assert!(p.len() <= tags.len());
        }
    }
}

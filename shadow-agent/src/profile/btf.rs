//! Byte offsets of kernel struct members, from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF cannot emit CO-RE relocations, so a tp_btf program that reads a field of a
//! typed argument (the woken task's `pid` in `sched_wakeup`) gets the field's offset from
//! the agent as a load-time global; the verifier then checks that access against the same
//! BTF. Only what that needs is parsed: type names, struct members, typedef chains.
//! (aya-obj parses BTF but keeps member offsets private; the one crate that exposes them is
//! LGPL, which this MIT/Apache project does not take in.)

use std::path::{Path, PathBuf};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading kernel BTF {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("kernel BTF {path}: no struct {name}")]
    NoStruct { path: PathBuf, name: String },
    #[error("kernel BTF {path}: struct {strukt} has no member {member}")]
    NoMember {
        path: PathBuf,
        strukt: String,
        member: String,
    },
    #[error("kernel BTF {path}: {strukt}.{member} is {reason}")]
    BadMember {
        path: PathBuf,
        strukt: String,
        member: String,
        reason: String,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Bytes that follow the 12-byte `btf_type` header of a type of `kind` with `vlen` entries.
fn trailing(kind: u32, vlen: u32) -> Option<usize> {
    let vlen = vlen as usize;
    Some(match kind {
        1 | 14 | 17 => 4,                            // INT, VAR, DECL_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, cv, FUNC, FLOAT, TYPE_TAG
        3 => 12,                                     // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen,                // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,                          // ENUM, FUNC_PROTO
        _ => return None,
    })
}

/// One parsed type: where its header starts in the type section.
#[derive(Clone, Copy)]
struct Ty {
    at: usize,
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
}

/// A parsed BTF blob (types and strings only).
pub struct Btf {
    path: PathBuf,
    data: Vec<u8>,
    types_start: usize,
    strings: std::ops::Range<usize>,
    /// Index `i` is type id `i + 1`.
    types: Vec<Ty>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Btf, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, data)
    }

    /// Parse `data` (little- or host-endian BTF; `path` names it in errors).
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<Btf, BtfError> {
        let bad = |reason: &str| BtfError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let u32_at = |d: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(d.get(at..at + 4)?.try_into().ok()?))
        };
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("shorter than its header"))?;
        if magic != MAGIC {
            return Err(bad("bad magic (not BTF, or the other byte order)"));
        }
        let hdr = |i: usize| u32_at(&data, 4 + 4 * i).ok_or_else(|| bad("truncated header"));
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (hdr(0)?, hdr(1)?, hdr(2)?, hdr(3)?, hdr(4)?);
        let base = hdr_len as usize;
        let types_start = base + type_off as usize;
        let types_end = types_start + type_len as usize;
        let strings = base + str_off as usize..base + str_off as usize + str_len as usize;
        if types_end > data.len() || strings.end > data.len() {
            return Err(bad("sections run past the end of the file"));
        }
        let mut types = Vec::new();
        let mut at = types_start;
        while at < types_end {
            let (Some(name_off), Some(info), Some(size_or_type)) = (
                u32_at(&data, at),
                u32_at(&data, at + 4),
                u32_at(&data, at + 8),
            ) else {
                return Err(bad("truncated type"));
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = trailing(kind, vlen)
                .ok_or_else(|| bad(&format!("unknown type kind {kind} at byte {at}")))?;
            types.push(Ty {
                at,
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_type,
            });
            at += 12 + extra;
        }
        if at != types_end {
            return Err(bad("type section does not end on a type boundary"));
        }
        Ok(Btf {
            path: path.to_owned(),
            data,
            types_start,
            strings,
            types,
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        // In bounds: every type's trailing data was checked against the section at parse.
        self.data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.start + off as usize;
        let bytes = self.data.get(s..self.strings.end).unwrap_or(&[]);
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Option<Ty> {
        self.types.get((id as usize).checked_sub(1)?).copied()
    }

    /// Size in bytes of type `id` after typedefs and qualifiers, if it is an integer.
    fn int_size(&self, mut id: u32) -> Option<u32> {
        for _ in 0..16 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_INT => return Some(t.size_or_type),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset and type id of member `member` of `struct strukt` (not a bitfield).
    fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        // The first complete struct of that name (forward declarations are kind FWD).
        let st = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == strukt)
            .ok_or_else(|| BtfError::NoStruct {
                path: self.path.clone(),
                name: strukt.to_owned(),
            })?;
        debug_assert!(st.at >= self.types_start);
        for i in 0..st.vlen as usize {
            let m = st.at + 12 + 12 * i;
            if self.name(self.u32_at(m)) != member {
                continue;
            }
            let ty = self.u32_at(m + 4);
            let raw = self.u32_at(m + 8);
            let (bit_off, bitfield) = if st.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if bitfield != 0 || bit_off % 8 != 0 {
                return Err(self.bad(strukt, member, format!("a bitfield (bit offset {bit_off})")));
            }
            return Ok((bit_off / 8, ty));
        }
        Err(BtfError::NoMember {
            path: self.path.clone(),
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        })
    }

    fn bad(&self, strukt: &str, member: &str, reason: String) -> BtfError {
        BtfError::BadMember {
            path: self.path.clone(),
            strukt: strukt.to_owned(),
            member: member.to_owned(),
            reason,
        }
    }

    /// Byte offset of integer member `member` of `struct strukt`, and its size in bytes.
    pub fn int_member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let (off, ty) = self.member(strukt, member)?;
        let size = self
            .int_size(ty)
            .ok_or_else(|| self.bad(strukt, member, format!("not an integer (type id {ty})")))?;
        Ok((off, size))
    }

    /// Byte offset of integer member `member` of `struct strukt`, which must be `size` bytes.
    pub fn int_member_sized(&self, strukt: &str, member: &str, size: u32) -> Result<u32, BtfError> {
        let (off, got) = self.int_member(strukt, member)?;
        if got == size {
            Ok(off)
        } else {
            Err(self.bad(strukt, member, format!("{got} bytes, not {size}")))
        }
    }

    /// Byte offset of pointer member `member` of `struct strukt`.
    pub fn ptr_member(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let (off, ty) = self.member(strukt, member)?;
        let mut id = ty;
        for _ in 0..16 {
            let Some(t) = self.ty(id) else { break };
            match t.kind {
                KIND_PTR => return Ok(off),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        Err(self.bad(strukt, member, format!("not a pointer (type id {ty})")))
    }

    /// Byte offset of member `member` of `struct strukt` whose type is the embedded
    /// `struct inner` (not a pointer to it): the start of a nested struct's members.
    pub fn struct_member(&self, strukt: &str, member: &str, inner: &str) -> Result<u32, BtfError> {
        let (off, ty) = self.member(strukt, member)?;
        let mut id = ty;
        for _ in 0..16 {
            let Some(t) = self.ty(id) else { break };
            match t.kind {
                KIND_STRUCT if self.name(t.name_off) == inner => return Ok(off),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        Err(self.bad(
            strukt,
            member,
            format!("not an embedded struct {inner} (type id {ty})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int` (id 1), `typedef int pid_t` (id 2),
    /// `struct task { long state; pid_t pid; int bits:3; struct task *parent; }` (id 3) and
    /// `struct task *` (id 4).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0pid_t\0task\0state\0pid\0bits\0parent\0";
        let off = |s: &str| {
            let needle = format!("\0{s}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string")
                + 1) as u32
        };
        let mut types: Vec<u32> = vec![
            // int: name, info (kind INT), size 4, encoding (signed, 32 bits)
            off("int"),
            KIND_INT << 24,
            4,
            (1 << 24) | 32,
            // typedef pid_t -> 1
            off("pid_t"),
            KIND_TYPEDEF << 24,
            1,
            // struct task, kind_flag set (bitfield sizes in member offsets), 4 members, 24 B
            off("task"),
            (1 << 31) | (KIND_STRUCT << 24) | 4,
            24,
            off("state"),
            1,
            0,
            off("pid"),
            2,
            64,
            off("bits"),
            1,
            (3 << 24) | 96,
            off("parent"),
            4,
            128,
            // struct task * -> 3
            0,
            KIND_PTR << 24,
            3,
        ];
        let type_bytes: Vec<u8> = types.drain(..).flat_map(u32::to_ne_bytes).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_an_integer_member_through_a_typedef() {
        let btf = Btf::parse(Path::new("t"), blob()).expect("parse");
        assert_eq!(btf.int_member("task", "pid").expect("pid"), (8, 4));
        assert_eq!(btf.int_member("task", "state").expect("state"), (0, 4));
    }

    #[test]
    fn finds_a_pointer_member_and_refuses_the_wrong_kind() {
        let btf = Btf::parse(Path::new("t"), blob()).expect("parse");
        assert_eq!(btf.ptr_member("task", "parent").expect("parent"), 16);
        let e = btf.ptr_member("task", "pid").unwrap_err().to_string();
        assert!(e.contains("not a pointer"), "{e}");
        let e = btf.int_member("task", "parent").unwrap_err().to_string();
        assert!(e.contains("not an integer"), "{e}");
    }

    #[test]
    fn errors_name_the_struct_and_member() {
        let btf = Btf::parse(Path::new("t"), blob()).expect("parse");
        let e = btf.int_member("task", "tgid").unwrap_err().to_string();
        assert!(e.contains("task has no member tgid"), "{e}");
        let e = btf.int_member("nope", "pid").unwrap_err().to_string();
        assert!(e.contains("no struct nope"), "{e}");
        let e = btf.int_member("task", "bits").unwrap_err().to_string();
        assert!(e.contains("bitfield"), "{e}");
    }

    #[test]
    fn rejects_truncated_or_foreign_data() {
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(Path::new("t"), b).is_err());
        assert!(Btf::parse(Path::new("t"), vec![0; 64]).is_err());
        assert!(Btf::parse(Path::new("t"), vec![]).is_err());
    }

    #[test]
    fn the_running_kernel_has_task_struct_pid() {
        // Every kernel this agent supports publishes BTF; the offset is small and the
        // field is a 4-byte pid_t.
        let btf = Btf::kernel().expect("kernel BTF");
        let (off, size) = btf
            .int_member("task_struct", "pid")
            .expect("task_struct.pid");
        assert_eq!(size, 4);
        assert!(off > 0 && off < 16384, "offset {off}");
    }

    #[test]
    fn the_running_kernel_has_the_task_to_cgroup_id_chain() {
        let btf = Btf::kernel().expect("kernel BTF");
        for (s, m) in [
            ("task_struct", "cgroups"),
            ("css_set", "dfl_cgrp"),
            ("cgroup", "kn"),
        ] {
            btf.ptr_member(s, m)
                .unwrap_or_else(|e| panic!("{s}.{m}: {e}"));
        }
        assert_eq!(btf.int_member("kernfs_node", "id").expect("kn id").1, 8);
    }

    #[test]
    fn an_embedded_struct_member_is_checked_by_name() {
        let btf = Btf::parse(Path::new("t"), blob()).expect("parse");
        let e = btf
            .struct_member("task", "pid", "task")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an embedded struct task"), "{e}");
        // A pointer to the struct is not the struct.
        let e = btf
            .struct_member("task", "parent", "task")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an embedded struct"), "{e}");
        let btf = Btf::kernel().expect("kernel BTF");
        let si = btf
            .struct_member("task_struct", "sched_info", "sched_info")
            .expect("task_struct.sched_info");
        let se = btf
            .struct_member("task_struct", "se", "sched_entity")
            .expect("task_struct.se");
        assert!(
            si > 0 && se > 0 && si != se,
            "sched_info at {si}, se at {se}"
        );
        assert!(btf
            .struct_member("task_struct", "se", "sched_info")
            .is_err());
    }
}

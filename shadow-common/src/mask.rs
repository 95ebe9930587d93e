//! Length-preserving masking of mirrored payloads, shared by the eBPF egress program on the
//! shadow interface and the host tests.
//!
//! Everything here is a streaming, byte-at-a-time state machine whose whole state is the
//! small `repr(C)` [`HttpState`], so a request split over any number of TCP segments is
//! masked exactly as if it arrived in one piece: the datapath keeps one `HttpState` per flow
//! in an LRU hash map and feeds each segment's payload through [`mask_byte`].
//!
//! * HTTP/1.x header values by header name (case-insensitive), including obs-fold
//!   continuation lines, CRLF or bare-LF line ends;
//! * query-string and `application/x-www-form-urlencoded` body parameter values by name
//!   (names percent-decoded and `+` as space before comparing, case-insensitive);
//! * bodies are skipped by `Content-Length`, so keep-alive and pipelined requests stay in sync;
//! * anything the machine cannot follow (not HTTP, chunked bodies, malformed lines) makes the
//!   state [`ST_BROKEN`], which is sticky: the caller applies the rule's fallback (mask the
//!   whole payload or do not mirror) to every later byte of the flow. Nothing after a parse
//!   failure is ever passed unmasked.
//!
//! Masked bytes become the spec's fill byte, or (`REPLACE_TOKEN`) a keyed token of the
//! same length ([`mask_http`]): the same secret gives the same token in every request, so
//! a shadow still sees one session per cookie and one client per API key. CR, LF and the
//! whitespace before a value are kept so the clone still parses as the same request.

/// Header names the spec holds, the first `HDR_FIRST_USER` being framing headers the parser
/// reads (never masked unless also listed by the user).
pub const MAX_HEADERS: usize = 16;
/// Longest header or parameter name, in bytes.
pub const NAME_LEN: usize = 64;
/// Parameter names the spec holds.
pub const MAX_PARAMS: usize = 8;
/// Byte ranges per rule.
pub const MAX_RANGES: usize = 4;

pub const HDR_CONTENT_LENGTH: usize = 0;
pub const HDR_CONTENT_TYPE: usize = 1;
pub const HDR_TRANSFER_ENCODING: usize = 2;
/// Index of the first user-listed header name.
pub const HDR_FIRST_USER: usize = 3;
const FRAMING: [&[u8]; HDR_FIRST_USER] = [b"content-length", b"content-type", b"transfer-encoding"];
const FORM_TYPE: &[u8] = b"application/x-www-form-urlencoded";

/// Default `MaskSpec::scan_limit`, bytes.
pub const DEFAULT_SCAN_LIMIT: u32 = 4096;
/// Largest `MaskSpec::scan_limit`: one whole GSO frame.
pub const MAX_SCAN_LIMIT: u32 = 65536;

/// The datapath's chunk: payload bytes loaded, parsed or filled per `bpf_loop` step.
pub const MASK_FILL_LEN: usize = 2048;
/// Bytes of the fill buffer (`MASK_FILL`) the bulk fill stores from: a chunk at a time when
/// it must also sum the old bytes, up to all of it at once when the kernel completes the
/// checksum later (fewer helper calls per 64 KiB GSO segment: 4 instead of 32).
pub const MASK_FILL_MAP_LEN: usize = 16384;

/// The default masked headers.
pub const DEFAULT_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// What to mask, global to the mirror (one entry of `MASK_SPEC`).
///
/// Names are held as 64-bit FNV-1a hashes of their lower-case bytes plus their length: the
/// datapath hashes each name as it streams by and compares only at its end, which keeps
/// the per-byte work (and the verifier's) constant. A collision can only make the parser
/// mask a value it need not, or misread framing of a request whose header name collides
/// with a framing header (about 2^-64 per distinct name).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskSpec {
    pub header_hash: [u64; MAX_HEADERS],
    pub param_hash: [u64; MAX_PARAMS],
    /// Hash of "application/x-www-form-urlencoded".
    pub form_hash: u64,
    /// Name lengths; 0 marks an unused slot.
    pub header_len: [u8; MAX_HEADERS],
    pub param_len: [u8; MAX_PARAMS],
    /// The byte masked values become (and, with tokens, what byte ranges and the "mask"
    /// fallback still use).
    pub fill: u8,
    /// `REPLACE_FILL` or `REPLACE_TOKEN`: what header and parameter values become.
    pub replace: u8,
    pub _pad: [u8; 2],
    /// Payload bytes scanned per segment at most; later bytes of a segment are handled by
    /// the rule's fallback unless the parser is inside a body it skips by length.
    pub scan_limit: u32,
    /// The deployment's key for `REPLACE_TOKEN`.
    pub token_key: crate::pseudo::PrfKey,
}
const _: () = assert!(core::mem::size_of::<MaskSpec>() == 16 * 8 + 8 * 8 + 8 + 16 + 8 + 8 + 16);

/// `MaskSpec::replace`: masked values become the fill byte.
pub const REPLACE_FILL: u8 = 0;
/// `MaskSpec::replace`: masked values become keyed same-length tokens.
pub const REPLACE_TOKEN: u8 = 1;

impl Default for MaskSpec {
    fn default() -> Self {
        MaskSpec {
            header_hash: [0; MAX_HEADERS],
            param_hash: [0; MAX_PARAMS],
            form_hash: hash_name(FORM_TYPE),
            header_len: [0; MAX_HEADERS],
            param_len: [0; MAX_PARAMS],
            fill: b'*',
            replace: REPLACE_FILL,
            _pad: [0; 2],
            scan_limit: DEFAULT_SCAN_LIMIT,
            token_key: crate::pseudo::PrfKey { k0: 0, k1: 0 },
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of the name hash (case-insensitive).
#[inline(always)]
pub fn hash_step(h: u64, c: u8) -> u64 {
    (h ^ c.to_ascii_lowercase() as u64).wrapping_mul(FNV_PRIME)
}

/// The name hash of `name`.
pub fn hash_name(name: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &c in name {
        h = hash_step(h, c);
    }
    h
}

/// Why a mask specification was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// More header names than `MAX_HEADERS - HDR_FIRST_USER`.
    TooManyHeaders,
    TooManyParams,
    /// Name index `.0` is empty.
    EmptyName(usize),
    /// Name index `.0` is longer than `NAME_LEN`.
    LongName(usize),
    /// Name index `.0` holds bytes that cannot appear in a header name (token characters).
    BadHeaderName(usize),
    /// The fill byte is CR, LF, or not printable ASCII.
    BadFill,
    /// The scan limit is 0 or above `MAX_SCAN_LIMIT`.
    BadScanLimit,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl MaskSpec {
    /// The same spec with header and parameter values replaced by keyed tokens.
    pub fn with_tokens(mut self, key: crate::pseudo::PrfKey) -> MaskSpec {
        self.replace = REPLACE_TOKEN;
        self.token_key = key;
        self
    }

    /// Build a spec from user header and parameter names (any case) and the fill byte.
    pub fn build(headers: &[&str], params: &[&str], fill: u8) -> Result<MaskSpec, SpecError> {
        Self::build_with_limit(headers, params, fill, DEFAULT_SCAN_LIMIT)
    }

    /// [`MaskSpec::build`] with a scan limit in bytes per segment.
    pub fn build_with_limit(
        headers: &[&str],
        params: &[&str],
        fill: u8,
        scan_limit: u32,
    ) -> Result<MaskSpec, SpecError> {
        if scan_limit == 0 || scan_limit > MAX_SCAN_LIMIT {
            return Err(SpecError::BadScanLimit);
        }
        if headers.len() > MAX_HEADERS - HDR_FIRST_USER {
            return Err(SpecError::TooManyHeaders);
        }
        if params.len() > MAX_PARAMS {
            return Err(SpecError::TooManyParams);
        }
        if !(0x21..0x7f).contains(&fill) {
            return Err(SpecError::BadFill);
        }
        let mut s = MaskSpec {
            fill,
            scan_limit,
            ..MaskSpec::default()
        };
        for (i, n) in FRAMING.iter().enumerate() {
            s.header_hash[i] = hash_name(n);
            s.header_len[i] = n.len() as u8;
        }
        for (i, h) in headers.iter().enumerate() {
            let b = h.as_bytes();
            if b.is_empty() {
                return Err(SpecError::EmptyName(i));
            }
            if b.len() > NAME_LEN {
                return Err(SpecError::LongName(i));
            }
            if !b.iter().all(|&c| is_tchar(c)) {
                return Err(SpecError::BadHeaderName(i));
            }
            s.header_hash[HDR_FIRST_USER + i] = hash_name(b);
            s.header_len[HDR_FIRST_USER + i] = b.len() as u8;
        }
        for (i, p) in params.iter().enumerate() {
            let b = p.as_bytes();
            if b.is_empty() {
                return Err(SpecError::EmptyName(i));
            }
            if b.len() > NAME_LEN {
                return Err(SpecError::LongName(i));
            }
            s.param_hash[i] = hash_name(b);
            s.param_len[i] = b.len() as u8;
        }
        Ok(s)
    }
}

/// Per-rule masking (one entry of `MASK_RULES` per selection rule).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskRule {
    /// `MASK_*` bits; 0: clones of this rule are sent as they are.
    pub flags: u8,
    /// `FALLBACK_*`: what happens to bytes the parser cannot follow.
    pub fallback: u8,
    pub n_ranges: u8,
    pub _pad: u8,
    /// `(offset, length)` in payload bytes of each segment or datagram.
    pub ranges: [[u16; 2]; MAX_RANGES],
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<MaskRule>() == 24);

/// `MaskRule::flags`: parse the flow as HTTP/1.x requests (TCP only).
pub const MASK_HTTP: u8 = 1;
/// `MaskRule::flags`: mask the byte ranges.
pub const MASK_RANGES: u8 = 2;
/// Unparseable bytes are replaced by the fill byte (the clone is still sent).
pub const FALLBACK_MASK: u8 = 0;
/// The clone of a segment holding unparseable bytes is not sent.
pub const FALLBACK_DROP: u8 = 1;

/// Whether payload byte `i` falls in one of the rule's ranges.
#[inline(always)]
pub fn in_ranges(rule: &MaskRule, i: u32) -> bool {
    let mut k = 0;
    while k < MAX_RANGES {
        if k >= rule.n_ranges as usize {
            return false;
        }
        let [off, len] = rule.ranges[k];
        if i >= off as u32 && i < off as u32 + len as u32 {
            return true;
        }
        k += 1;
    }
    false
}

// Parser states (`HttpState::st`).
pub const ST_REQ_START: u8 = 0;
pub const ST_METHOD: u8 = 1;
pub const ST_PATH: u8 = 2;
pub const ST_QNAME: u8 = 3;
pub const ST_QVALUE: u8 = 4;
pub const ST_VERSION: u8 = 5;
pub const ST_LINE_START: u8 = 6;
pub const ST_HNAME: u8 = 7;
pub const ST_HOWS: u8 = 8;
pub const ST_HVALUE: u8 = 9;
pub const ST_EOH: u8 = 10;
pub const ST_BODY_SKIP: u8 = 11;
pub const ST_FNAME: u8 = 12;
pub const ST_FVALUE: u8 = 13;
/// The flow could not be followed; sticky.
pub const ST_BROKEN: u8 = 14;

// `HttpState::flags`.
const F_MASKING: u8 = 1;
const F_FORM: u8 = 2;
const F_CHUNKED: u8 = 4;
const F_CL_SEEN: u8 = 8;
/// `HttpState::tok` holds the token state of the value being masked.
const F_TOKEN: u8 = 16;
/// `HttpState::flags`: the TCP sequence tracking is initialised.
pub const F_SEQ_VALID: u8 = 0x80;

/// `HttpState::special`: none of the framing headers.
const SP_NONE: u8 = 0xff;
/// Longest Content-Length accepted (larger bodies make the flow unparseable).
pub const MAX_CONTENT_LENGTH: u32 = 1 << 30;

/// The parser's whole state for one flow direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpState {
    /// Next expected TCP sequence number (when `F_SEQ_VALID`).
    pub next_seq: u32,
    /// Body bytes still to come.
    pub body_left: u32,
    /// Content-Length being read.
    pub content_length: u32,
    pub _pad0: u32,
    /// Hash of the name (or Content-Type media type) being read.
    pub hash: u64,
    pub st: u8,
    /// Bytes of the current name read (saturates).
    pub pos: u8,
    pub flags: u8,
    /// Percent-decoding in parameter names: 0 none, 1 after '%', 2 after the first digit.
    pub pct: u8,
    pub pct_hi: u8,
    /// Which framing header the current line is (`HDR_*`), or `SP_NONE`.
    pub special: u8,
    /// Content-Type: 0 while reading the media type, 1 once it is settled.
    pub ctype_done: u8,
    pub _pad: u8,
    /// Token state of the value being masked (`REPLACE_TOKEN`, valid with `F_TOKEN`).
    pub tok: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<HttpState>() == 64);

impl Default for HttpState {
    fn default() -> Self {
        HttpState {
            next_seq: 0,
            body_left: 0,
            content_length: 0,
            _pad0: 0,
            hash: FNV_OFFSET,
            st: ST_REQ_START,
            pos: 0,
            flags: 0,
            pct: 0,
            pct_hi: 0,
            special: SP_NONE,
            ctype_done: 0,
            _pad: 0,
            tok: [0; 4],
        }
    }
}

impl HttpState {
    /// Back to the state of a new flow, field by field in place: the datapath resets the
    /// state in its scratch map, and building a whole default value first would cost the
    /// program 64 bytes of its 512-byte stack. `tok` is left as it is: it is only read
    /// under `F_TOKEN`, which this clears.
    #[inline(always)]
    pub fn reset(&mut self) {
        self.next_seq = 0;
        self.body_left = 0;
        self.content_length = 0;
        self._pad0 = 0;
        self.hash = FNV_OFFSET;
        self.st = ST_REQ_START;
        self.pos = 0;
        self.flags = 0;
        self.pct = 0;
        self.pct_hi = 0;
        self.special = SP_NONE;
        self.ctype_done = 0;
        self._pad = 0;
    }
}

/// Key of the per-flow parser state (`MASK_FLOWS`): the 5-tuple of one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    #[inline(always)]
    pub fn of(f: &crate::mirror::Flow) -> FlowKey {
        FlowKey {
            src: f.src,
            dst: f.dst,
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
            family: f.family,
            _pad: [0; 2],
        }
    }

    /// The key of the opposite direction (a reply's packet → its request direction).
    #[inline(always)]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

/// `skb->mark` the TC ingress program puts on each clone (rule index in the low byte) so the
/// egress program on the shadow interface knows what it is masking; the original's mark is
/// restored right after cloning, and crossing into the shadow's netns clears the clone's.
pub const CLONE_MARK: u32 = 0x5348_4400;
pub const CLONE_MARK_MASK: u32 = 0xffff_ff00;

crate::impl_pod!(MaskSpec, MaskRule, HttpState, FlowKey);

#[inline(always)]
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Add one byte to the name being read.
#[inline(always)]
fn name_byte(st: &mut HttpState, c: u8) {
    st.hash = hash_step(st.hash, c);
    st.pos = st.pos.saturating_add(1);
}

/// Index of a spec name equal to the one just read (`hash`, `len`).
#[inline(always)]
fn lookup<const N: usize>(hashes: &[u64; N], lens: &[u8; N], hash: u64, len: u8) -> Option<usize> {
    let mut k = 0;
    while k < N {
        if lens[k] != 0 && lens[k] == len && hashes[k] == hash {
            return Some(k);
        }
        k += 1;
    }
    None
}

/// Which framing header (`HDR_*`) the header name just read (`hash`, `len`) is, and
/// whether the user listed it for masking (a framing header may be both).
#[inline(always)]
fn lookup_header(spec: &MaskSpec, hash: u64, len: u8) -> (Option<usize>, bool) {
    let mut framing = None;
    let mut user = false;
    let mut k = 0;
    while k < MAX_HEADERS {
        if spec.header_len[k] != 0 && spec.header_len[k] == len && spec.header_hash[k] == hash {
            if k < HDR_FIRST_USER {
                framing = Some(k);
            } else {
                user = true;
            }
        }
        k += 1;
    }
    (framing, user)
}

/// Start a new request.
#[inline(always)]
fn reset_request(st: &mut HttpState) {
    st.st = ST_REQ_START;
    st.flags &= F_SEQ_VALID;
    st.body_left = 0;
    st.content_length = 0;
    st.special = SP_NONE;
}

/// One byte of a parameter name (query or form).
#[inline(always)]
fn param_name_byte(st: &mut HttpState, spec: &MaskSpec, b: u8, value_state: u8) {
    if st.pct == 1 {
        match hex(b) {
            Some(h) => {
                st.pct_hi = h;
                st.pct = 2;
            }
            None => {
                // A stray '%': taken literally, then this byte.
                st.pct = 0;
                name_byte(st, b'%');
                name_byte(st, b);
            }
        }
        return;
    }
    if st.pct == 2 {
        st.pct = 0;
        let c = match hex(b) {
            Some(lo) => (st.pct_hi << 4) | lo,
            None => 0, // malformed escape: a NUL, which no name holds
        };
        name_byte(st, c);
        return;
    }
    match b {
        b'=' => {
            if lookup(&spec.param_hash, &spec.param_len, st.hash, st.pos).is_some() {
                st.flags |= F_MASKING;
            } else {
                st.flags &= !F_MASKING;
            }
            st.st = value_state;
        }
        b'%' => st.pct = 1,
        b'+' => name_byte(st, b' '),
        _ => name_byte(st, b),
    }
}

#[inline(always)]
fn start_param(st: &mut HttpState, name_state: u8) {
    st.st = name_state;
    st.hash = FNV_OFFSET;
    st.pos = 0;
    st.pct = 0;
    st.flags &= !F_MASKING;
}

/// Feed one payload byte of an HTTP rule; returns what the byte becomes when it is part of a
/// masked value (the fill byte, or the next byte of the value's token), `None` when it is
/// kept. As [`mask_byte`], `None` also when the state is (or becomes) `ST_BROKEN`.
#[inline(always)]
pub fn mask_http(st: &mut HttpState, spec: &MaskSpec, b: u8) -> Option<u8> {
    if !mask_byte(st, spec, b) {
        // Between values (or a line break inside an obs-folded one): the next masked byte
        // starts a new token.
        st.flags &= !F_TOKEN;
        return None;
    }
    if spec.replace != REPLACE_TOKEN {
        return Some(spec.fill);
    }
    if st.flags & F_TOKEN == 0 {
        st.tok = crate::pseudo::token_init(&spec.token_key);
        st.flags |= F_TOKEN;
    }
    Some(token_char(b, crate::pseudo::token_step(&mut st.tok, b)))
}

/// The token byte for value byte `orig` from 64 keyed bits `r`: a digit stays a digit, a
/// letter a letter of the same case, the separators `space . - _ = ; , : / + ~` stay as
/// they are (so `Bearer a.b.c` or `a=1; b=2` keep their shape), and any other byte becomes
/// a letter or digit. Never CR, LF or a byte outside printable ASCII.
#[inline(always)]
pub fn token_char(orig: u8, r: u64) -> u8 {
    match orig {
        b'0'..=b'9' => b'0' + (r % 10) as u8,
        b'a'..=b'z' => b'a' + (r % 26) as u8,
        b'A'..=b'Z' => b'A' + (r % 26) as u8,
        b' ' | b'.' | b'-' | b'_' | b'=' | b';' | b',' | b':' | b'/' | b'+' | b'~' => orig,
        _ => {
            let x = (r % 62) as u8;
            if x < 10 {
                b'0' + x
            } else if x < 36 {
                b'a' + (x - 10)
            } else {
                b'A' + (x - 36)
            }
        }
    }
}

/// Feed one payload byte; returns true when it must be replaced by the fill byte.
/// When the state is (or becomes) `ST_BROKEN` the return value is false and the caller
/// applies the rule's fallback to this and every later byte.
#[inline(always)]
pub fn mask_byte(st: &mut HttpState, spec: &MaskSpec, b: u8) -> bool {
    match st.st {
        ST_REQ_START => {
            if b == b'\r' || b == b'\n' {
                // Blank lines between requests are tolerated (RFC 9112 2.2).
            } else if b.is_ascii_uppercase() {
                st.st = ST_METHOD;
            } else {
                st.st = ST_BROKEN;
            }
            false
        }
        ST_METHOD => {
            if b == b' ' {
                st.st = ST_PATH;
            } else if !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                st.st = ST_BROKEN;
            }
            false
        }
        ST_PATH => {
            match b {
                b'?' => start_param(st, ST_QNAME),
                b' ' => st.st = ST_VERSION,
                b'\r' | b'\n' => st.st = ST_BROKEN,
                _ => {}
            }
            false
        }
        ST_QNAME => {
            match b {
                b'&' | b';' => start_param(st, ST_QNAME),
                b' ' => st.st = ST_VERSION,
                b'#' => st.st = ST_PATH,
                b'\r' | b'\n' => st.st = ST_BROKEN,
                _ => param_name_byte(st, spec, b, ST_QVALUE),
            }
            false
        }
        ST_QVALUE => match b {
            b'&' | b';' => {
                start_param(st, ST_QNAME);
                false
            }
            b' ' => {
                st.flags &= !F_MASKING;
                st.st = ST_VERSION;
                false
            }
            b'#' => {
                st.flags &= !F_MASKING;
                st.st = ST_PATH;
                false
            }
            b'\r' | b'\n' => {
                st.st = ST_BROKEN;
                false
            }
            _ => st.flags & F_MASKING != 0,
        },
        ST_VERSION => {
            if b == b'\n' {
                st.st = ST_LINE_START;
                st.flags &= !F_MASKING;
            }
            false
        }
        ST_LINE_START => {
            if b == b'\r' {
                st.st = ST_EOH;
                false
            } else if b == b'\n' {
                end_of_headers(st);
                false
            } else if b == b' ' || b == b'\t' {
                // obs-fold: the previous header's value continues (masked if it was).
                st.st = ST_HVALUE;
                false
            } else if is_tchar(b) {
                st.st = ST_HNAME;
                st.flags &= !F_MASKING;
                st.special = SP_NONE;
                st.hash = FNV_OFFSET;
                st.pos = 0;
                name_byte(st, b);
                false
            } else {
                st.st = ST_BROKEN;
                false
            }
        }
        ST_HNAME => {
            if b == b':' {
                let (framing, user) = lookup_header(spec, st.hash, st.pos);
                if user {
                    st.flags |= F_MASKING;
                }
                if let Some(k) = framing {
                    st.special = k as u8;
                    if k == HDR_CONTENT_LENGTH {
                        if st.flags & F_CL_SEEN != 0 {
                            // Repeated Content-Length: ambiguous framing.
                            st.st = ST_BROKEN;
                            return false;
                        }
                        st.flags |= F_CL_SEEN;
                        st.content_length = 0;
                    } else if k == HDR_CONTENT_TYPE {
                        st.ctype_done = 0;
                        st.hash = FNV_OFFSET;
                        st.pos = 0;
                    } else {
                        st.flags |= F_CHUNKED;
                    }
                }
                st.st = ST_HOWS;
            } else if is_tchar(b) {
                name_byte(st, b);
            } else {
                st.st = ST_BROKEN;
            }
            false
        }
        ST_HOWS => {
            if b == b' ' || b == b'\t' {
                return false;
            }
            st.st = ST_HVALUE;
            hvalue_byte(st, spec, b)
        }
        ST_HVALUE => hvalue_byte(st, spec, b),
        ST_EOH => {
            if b == b'\n' {
                end_of_headers(st);
            } else {
                st.st = ST_BROKEN;
            }
            false
        }
        ST_BODY_SKIP => {
            body_byte(st);
            false
        }
        ST_FNAME => {
            match b {
                b'&' => start_param(st, ST_FNAME),
                _ => param_name_byte(st, spec, b, ST_FVALUE),
            }
            body_byte(st);
            false
        }
        ST_FVALUE => {
            let m = if b == b'&' {
                start_param(st, ST_FNAME);
                false
            } else {
                st.flags & F_MASKING != 0
            };
            body_byte(st);
            m
        }
        _ => {
            st.st = ST_BROKEN;
            false
        }
    }
}

#[inline(always)]
fn hvalue_byte(st: &mut HttpState, spec: &MaskSpec, b: u8) -> bool {
    let special = st.special;
    if special == HDR_CONTENT_TYPE as u8 && st.ctype_done == 0 {
        if b == b';' || b == b' ' || b == b'\t' || b == b'\r' || b == b'\n' {
            st.ctype_done = 1;
            if st.pos as usize == FORM_TYPE.len() && st.hash == spec.form_hash {
                st.flags |= F_FORM;
            } else {
                st.flags &= !F_FORM;
            }
        } else {
            name_byte(st, b);
        }
    }
    if b == b'\n' {
        st.special = SP_NONE;
        st.st = ST_LINE_START;
        return false;
    }
    if b == b'\r' {
        return false;
    }
    if special == HDR_CONTENT_LENGTH as u8 {
        if b.is_ascii_digit() {
            let v = st.content_length as u64 * 10 + (b - b'0') as u64;
            if v > MAX_CONTENT_LENGTH as u64 {
                st.st = ST_BROKEN;
                return false;
            }
            st.content_length = v as u32;
        } else if b != b' ' && b != b'\t' {
            st.st = ST_BROKEN;
            return false;
        }
    }
    st.flags & F_MASKING != 0
}

#[inline(always)]
fn end_of_headers(st: &mut HttpState) {
    if st.flags & F_CHUNKED != 0 {
        // Chunked request bodies are not followed.
        st.st = ST_BROKEN;
        return;
    }
    let len = st.content_length;
    let form = st.flags & F_FORM != 0;
    reset_request(st);
    if len > 0 {
        st.body_left = len;
        if form {
            start_param(st, ST_FNAME);
        } else {
            st.st = ST_BODY_SKIP;
        }
    }
}

#[inline(always)]
fn body_byte(st: &mut HttpState) {
    st.body_left = st.body_left.saturating_sub(1);
    if st.body_left == 0 {
        reset_request(st);
    }
}

/// In `ST_BODY_SKIP`, how many of the next `n` bytes can be skipped without looking at them
/// (and account for them). 0 in any other state.
#[inline(always)]
pub fn skip_body(st: &mut HttpState, n: u32) -> u32 {
    if st.st != ST_BODY_SKIP {
        return 0;
    }
    let k = if n < st.body_left { n } else { st.body_left };
    st.body_left -= k;
    if st.body_left == 0 {
        reset_request(st);
    }
    k
}

/// How a TCP segment relates to the flow's tracked sequence space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next bytes of the stream: parse.
    InOrder,
    /// Entirely before `next_seq` (a retransmission): fallback for this segment only.
    Old,
    /// A gap or a partial overlap: the stream can no longer be followed.
    Lost,
}

/// Classify a segment of `len` payload bytes at sequence `seq`.
#[inline(always)]
pub fn seq_check(st: &HttpState, seq: u32, len: u32) -> SeqVerdict {
    if seq == st.next_seq {
        return SeqVerdict::InOrder;
    }
    // Wrapping distance ahead of next_seq.
    let ahead = seq.wrapping_sub(st.next_seq);
    if ahead < 0x8000_0000 {
        return SeqVerdict::Lost;
    }
    if seq.wrapping_add(len).wrapping_sub(st.next_seq) as i32 <= 0 {
        SeqVerdict::Old
    } else {
        SeqVerdict::Lost
    }
}

/// Ones-complement checksum bookkeeping for bytes replaced in place: accumulates the old and
/// new 16-bit word contributions so the L4 checksum can be fixed with one
/// `bpf_l4_csum_replace` (`diff` mode). Offsets are relative to an even position of the
/// checksummed data (the transport payload starts at an even offset of the segment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta {
    pub old: u64,
    pub new: u64,
}

impl CsumDelta {
    #[inline(always)]
    pub fn replace(&mut self, off: u32, old: u8, new: u8) {
        let shift = if off & 1 == 0 { 8 } else { 0 };
        self.old += (old as u64) << shift;
        self.new += (new as u64) << shift;
    }

    /// The 32-bit ones-complement difference (new - old) to add to the checksum, as a
    /// number (big-endian words).
    #[inline(always)]
    pub fn diff(&self) -> u32 {
        let old = fold16(self.old);
        let new = fold16(self.new);
        new as u32 + (!old) as u32
    }

    /// [`CsumDelta::diff`] the way the kernel's checksum helpers hold it: words loaded from
    /// packet memory in the machine's byte order (`bpf_l4_csum_replace`'s `to` in diff mode).
    #[inline(always)]
    pub fn kernel_diff(&self) -> u32 {
        let old = fold16(self.old);
        let new = fold16(self.new);
        u16::from_be(new) as u32 + u16::from_be(!old) as u32
    }
}

impl CsumDelta {
    /// Account for a run of `n` payload bytes at payload position `pos`, all replaced by
    /// `fill`, given `old_sum`: the 32-bit ones-complement sum of their old contents as
    /// 32-bit words loaded in the machine's byte order from the run's first byte, zero
    /// padded to a multiple of 4 (what `bpf_csum_diff(NULL, 0, buf, len4, seed)` returns for
    /// them). Equivalent to [`CsumDelta::replace`] on every byte, in O(1) once the sum is
    /// known: the datapath's bulk fill for the "mask" fallback.
    #[inline(always)]
    pub fn replace_run(&mut self, pos: u32, n: u32, old_sum: u32, fill: u8) {
        // The machine-order 16-bit sum has the run's first byte in its low half (BPF and the
        // hosts this runs on are little-endian); `replace` keeps bytes at even positions in
        // the high half.
        let mut v = fold16(old_sum as u64);
        if cfg!(target_endian = "little") {
            v = v.swap_bytes();
        }
        if pos & 1 == 1 {
            v = v.swap_bytes();
        }
        self.old += v as u64;
        let even = if pos & 1 == 0 { n.div_ceil(2) } else { n / 2 };
        let odd = n - even;
        self.new += (even as u64) * ((fill as u64) << 8) + (odd as u64) * (fill as u64);
    }
}

/// Where a TCP segment falls relative to a request body the parser skips by length
/// ([`body_segment`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFit {
    /// The flow is not inside a skipped body (or the segment starts before the parser's
    /// position): the ordinary in-order check applies.
    No,
    /// Every byte of the segment lies inside the body: nothing to parse or mask, and the
    /// state needs no update (`next_seq + body_left`, the body's end, is unchanged).
    Inside,
    /// The segment starts inside the body and runs past its end: the state was moved to the
    /// segment's start (`next_seq = seq`, `body_left` shortened), so it is parsed in order
    /// from there, skipping the rest of the body by length.
    Resync,
}

/// Classify a segment of `len` payload bytes at sequence `seq` against a flow whose parser is
/// skipping a body by length (`ST_BODY_SKIP`, `next_seq + body_left` = the body's end).
/// Body bytes are never masked, so a segment ahead of `next_seq` within the body (after a
/// reordering, or one processed on another CPU first) needs no parsing and breaks nothing;
/// only bytes after the body's end must be seen in order.
#[inline(always)]
pub fn body_segment(st: &mut HttpState, seq: u32, len: u32) -> BodyFit {
    if st.st != ST_BODY_SKIP || st.flags & F_SEQ_VALID == 0 {
        return BodyFit::No;
    }
    let ahead = seq.wrapping_sub(st.next_seq);
    if ahead >= 0x8000_0000 || ahead > st.body_left {
        return BodyFit::No;
    }
    let room = st.body_left - ahead;
    if len <= room {
        return BodyFit::Inside;
    }
    st.next_seq = seq;
    st.body_left = room;
    if room == 0 {
        reset_request(st);
    }
    BodyFit::Resync
}

/// Fold a 64-bit sum into 16 bits with end-around carry.
#[inline(always)]
pub fn fold16(mut s: u64) -> u16 {
    let mut i = 0;
    while i < 4 {
        s = (s & 0xffff) + (s >> 16);
        i += 1;
    }
    s as u16
}

/// Apply `diff` to a stored checksum field the way the kernel's
/// `inet_proto_csum_replace_by_diff` does for a fully computed checksum (host tests).
pub fn apply_diff(csum: u16, diff: u32) -> u16 {
    let s = (diff as u64) + (!csum) as u64;
    !fold16(s)
}

#[cfg(test)]
mod tests;

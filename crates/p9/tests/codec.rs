//! Property tests of the codec: every T- and R-message round-trips, and no
//! byte sequence makes the decoder panic or read past the frame.

use std::cell::RefCell;

use p9::messages::*;
use p9::wire::{Qid, WireError};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// A string the codec accepts: no NUL.
fn s() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40)
}

fn qid() -> impl Strategy<Value = Qid> {
    (any::<u8>(), any::<u32>(), any::<u64>()).prop_map(|(ty, version, path)| Qid {
        ty,
        version,
        path,
    })
}

/// Owned inputs from which every T-message variant is built.
#[derive(Debug, Clone)]
struct TIn {
    variant: u8,
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    x: u64,
    y: u64,
    s1: Vec<u8>,
    s2: Vec<u8>,
    names: Vec<Vec<u8>>,
    data: Vec<u8>,
    set: SetAttr,
}

fn tin() -> impl Strategy<Value = TIn> {
    (
        (
            0u8..28,
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            s(),
            s(),
            proptest::collection::vec(s(), 0..=16),
            proptest::collection::vec(any::<u8>(), 0..200),
        ),
        any::<[u32; 4]>(),
        any::<[u64; 5]>(),
    )
        .prop_map(
            |((variant, a, b, c, d, x, y), (s1, s2, names, data), u, l)| TIn {
                variant,
                a,
                b,
                c,
                d,
                x,
                y,
                s1,
                s2,
                names,
                data,
                set: SetAttr {
                    valid: u[0],
                    mode: u[1],
                    uid: u[2],
                    gid: u[3],
                    size: l[0],
                    atime_sec: l[1],
                    atime_nsec: l[2],
                    mtime_sec: l[3],
                    mtime_nsec: l[4],
                },
            },
        )
}

fn build(t: &TIn) -> Tmessage<'_> {
    let (a, b, c, d, x, y) = (t.a, t.b, t.c, t.d, t.x, t.y);
    let (s1, s2) = (t.s1.as_slice(), t.s2.as_slice());
    let lock = Lock {
        ty: a as u8,
        start: x,
        length: y,
        proc_id: b,
        client_id: s1,
    };
    match t.variant {
        0 => Tmessage::Version {
            msize: a,
            version: s1,
        },
        1 => Tmessage::Auth {
            afid: a,
            uname: s1,
            aname: s2,
            n_uname: b,
        },
        2 => Tmessage::Attach {
            fid: a,
            afid: b,
            uname: s1,
            aname: s2,
            n_uname: c,
        },
        3 => Tmessage::Flush { oldtag: a as u16 },
        4 => Tmessage::Walk {
            fid: a,
            newfid: b,
            names: t.names.iter().map(|n| n.as_slice()).collect(),
        },
        5 => Tmessage::Read {
            fid: a,
            offset: x,
            count: b,
        },
        6 => Tmessage::Write {
            fid: a,
            offset: x,
            data: &t.data,
        },
        7 => Tmessage::Clunk { fid: a },
        8 => Tmessage::Remove { fid: a },
        9 => Tmessage::Statfs { fid: a },
        10 => Tmessage::Lopen { fid: a, flags: b },
        11 => Tmessage::Lcreate {
            fid: a,
            name: s1,
            flags: b,
            mode: c,
            gid: d,
        },
        12 => Tmessage::Symlink {
            fid: a,
            name: s1,
            target: s2,
            gid: b,
        },
        13 => Tmessage::Mknod {
            dfid: a,
            name: s1,
            mode: b,
            major: c,
            minor: d,
            gid: a ^ d,
        },
        14 => Tmessage::Rename {
            fid: a,
            dfid: b,
            name: s1,
        },
        15 => Tmessage::Readlink { fid: a },
        16 => Tmessage::Getattr { fid: a, mask: x },
        17 => Tmessage::Setattr {
            fid: a,
            attr: t.set,
        },
        18 => Tmessage::XattrWalk {
            fid: a,
            newfid: b,
            name: s1,
        },
        19 => Tmessage::XattrCreate {
            fid: a,
            name: s1,
            size: x,
            flags: b,
        },
        20 => Tmessage::Readdir {
            fid: a,
            offset: x,
            count: b,
        },
        21 => Tmessage::Fsync {
            fid: a,
            datasync: b,
        },
        22 => Tmessage::Lock {
            fid: a,
            flags: c,
            lock,
        },
        23 => Tmessage::GetLock { fid: a, lock },
        24 => Tmessage::Link {
            dfid: a,
            fid: b,
            name: s1,
        },
        25 => Tmessage::Mkdir {
            dfid: a,
            name: s1,
            mode: b,
            gid: c,
        },
        26 => Tmessage::Renameat {
            olddirfid: a,
            oldname: s1,
            newdirfid: b,
            newname: s2,
        },
        _ => Tmessage::Unlinkat {
            dirfid: a,
            name: s1,
            flags: b,
        },
    }
}

fn rmessage() -> impl Strategy<Value = Rmessage> {
    let attr = (qid(), any::<[u64; 18]>(), any::<[u32; 3]>()).prop_map(|(qid, v, u)| Attr {
        valid: v[0],
        qid,
        mode: u[0],
        uid: u[1],
        gid: u[2],
        nlink: v[1],
        rdev: v[2],
        size: v[3],
        blksize: v[4],
        blocks: v[5],
        atime_sec: v[6],
        atime_nsec: v[7],
        mtime_sec: v[8],
        mtime_nsec: v[9],
        ctime_sec: v[10],
        ctime_nsec: v[11],
        btime_sec: v[12],
        btime_nsec: v[13],
        gen: v[14],
        data_version: v[15],
    });
    let statfs = (any::<[u32; 3]>(), any::<[u64; 6]>()).prop_map(|(u, v)| StatFs {
        ty: u[0],
        bsize: u[1],
        blocks: v[0],
        bfree: v[1],
        bavail: v[2],
        files: v[3],
        ffree: v[4],
        fsid: v[5],
        namelen: u[2],
    });
    let data = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        any::<u32>().prop_map(|ecode| Rmessage::Lerror { ecode }),
        (any::<u32>(), s()).prop_map(|(msize, version)| Rmessage::Version { msize, version }),
        qid().prop_map(|aqid| Rmessage::Auth { aqid }),
        qid().prop_map(|qid| Rmessage::Attach { qid }),
        Just(Rmessage::Flush),
        proptest::collection::vec(qid(), 0..=16).prop_map(|qids| Rmessage::Walk { qids }),
        data.clone().prop_map(|data| Rmessage::Read { data }),
        any::<u32>().prop_map(|count| Rmessage::Write { count }),
        Just(Rmessage::Clunk),
        Just(Rmessage::Remove),
        statfs.prop_map(Rmessage::Statfs),
        (qid(), any::<u32>()).prop_map(|(qid, iounit)| Rmessage::Lopen { qid, iounit }),
        (qid(), any::<u32>()).prop_map(|(qid, iounit)| Rmessage::Lcreate { qid, iounit }),
        qid().prop_map(|qid| Rmessage::Symlink { qid }),
        qid().prop_map(|qid| Rmessage::Mknod { qid }),
        Just(Rmessage::Rename),
        s().prop_map(|target| Rmessage::Readlink { target }),
        attr.prop_map(Rmessage::Getattr),
        Just(Rmessage::Setattr),
        any::<u64>().prop_map(|size| Rmessage::XattrWalk { size }),
        Just(Rmessage::XattrCreate),
        data.prop_map(|data| Rmessage::Readdir { data }),
        Just(Rmessage::Fsync),
        any::<u8>().prop_map(|status| Rmessage::Lock { status }),
        (any::<u8>(), any::<u64>(), any::<u64>(), any::<u32>(), s()).prop_map(
            |(ty, start, length, proc_id, client_id)| {
                Rmessage::GetLock(Lock {
                    ty,
                    start,
                    length,
                    proc_id,
                    client_id,
                })
            }
        ),
        Just(Rmessage::Link),
        qid().prop_map(|qid| Rmessage::Mkdir { qid }),
        Just(Rmessage::Renameat),
        Just(Rmessage::Unlinkat),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_t_message_round_trips(t in tin(), tag in any::<u16>()) {
        let m = build(&t);
        let frame = m.encode(tag);
        prop_assert_eq!(frame.len(), u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize);
        let (rtag, back) = decode_tframe(&frame).unwrap();
        prop_assert_eq!(rtag, tag);
        prop_assert_eq!(back, m);
    }

    #[test]
    fn every_r_message_round_trips(m in rmessage(), tag in any::<u16>()) {
        let frame = m.encode(tag);
        let (rtag, back) = decode_rframe(&frame).unwrap();
        prop_assert_eq!(rtag, tag);
        prop_assert_eq!(back, m);
    }

    #[test]
    fn rread_built_in_place_matches_the_encoder(data in proptest::collection::vec(any::<u8>(), 0..500), tag in any::<u16>()) {
        let mut r = ReadReply::with_capacity(data.len());
        r.buffer().extend_from_slice(&data);
        prop_assert_eq!(r.into_frame(tag), Rmessage::Read { data }.encode(tag));
    }

    /// Raw bytes almost never carry a size field that matches their length,
    /// so this exercises the frame check only; the message decoders are
    /// exercised by `t_frames_never_panic_the_decoder` and
    /// `r_frames_never_panic_the_decoder`.
    #[test]
    fn arbitrary_bytes_never_panic_the_frame_check(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_tframe(&bytes);
        let _ = decode_rframe(&bytes);
    }

    #[test]
    fn truncating_a_valid_frame_is_an_error(t in tin(), cut in 1usize..64) {
        let mut frame = build(&t).encode(1);
        let cut = cut.min(frame.len() - 1);
        frame.truncate(frame.len() - cut);
        // With the size field fixed up, the body is now too short (or the
        // frame shorter than a header): never a silent success with other
        // contents.
        if frame.len() >= 4 {
            let n = frame.len() as u32;
            frame[..4].copy_from_slice(&n.to_le_bytes());
        }
        if let Ok((_, m)) = decode_tframe(&frame) {
            // Only Tfsync has an optional trailing field.
            prop_assert!(matches!(m, Tmessage::Fsync { .. }), "{:?}", m);
        }
    }
}

#[test]
fn walk_with_seventeen_names_is_refused() {
    let names: Vec<&[u8]> = vec![b"a"; 17];
    let frame = Tmessage::Walk {
        fid: 0,
        newfid: 1,
        names,
    }
    .encode(1);
    assert!(matches!(
        decode_tframe(&frame),
        Err(p9::wire::WireError::TooManyNames(17))
    ));
}

#[test]
fn strings_with_nul_are_refused() {
    let frame = Tmessage::Walk {
        fid: 0,
        newfid: 1,
        names: vec![b"a\0b"],
    }
    .encode(1);
    assert_eq!(
        decode_tframe(&frame).unwrap_err(),
        p9::wire::WireError::NulInString
    );
}

#[test]
fn replies_encoded_into_a_batch_are_whole_frames() {
    let replies = [
        (3u16, Rmessage::Clunk),
        (4, Rmessage::Lerror { ecode: 2 }),
        (
            5,
            Rmessage::Version {
                msize: 8192,
                version: b"9P2000.L".to_vec(),
            },
        ),
    ];
    let mut batch = b"prefix".to_vec();
    for (tag, r) in &replies {
        r.encode_into(*tag, &mut batch);
    }
    let mut at = 6;
    for (tag, r) in &replies {
        let size = u32::from_le_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
        assert_eq!(&batch[at..at + size], &r.encode(*tag)[..]);
        assert_eq!(
            decode_rframe(&batch[at..at + size]).unwrap(),
            (*tag, r.clone())
        );
        at += size;
    }
    assert_eq!(at, batch.len());
}

// Framed fuzzing of the message decoders. Every frame generated below has a
// size field equal to its length, so it passes the frame check and goes to
// the decoder for its type; what varies is the type (every known one, and
// unknown ones) and the body (random bytes, or a valid encoding that is then
// truncated, has a length or count field inflated, has bytes flipped, has
// bytes appended, or is sent under another type).

/// Every T-message type `decode_tframe` knows.
const T_TYPES: [u8; 28] = {
    use ty::*;
    [
        TVERSION,
        TAUTH,
        TATTACH,
        TFLUSH,
        TWALK,
        TREAD,
        TWRITE,
        TCLUNK,
        TREMOVE,
        TSTATFS,
        TLOPEN,
        TLCREATE,
        TSYMLINK,
        TMKNOD,
        TRENAME,
        TREADLINK,
        TGETATTR,
        TSETATTR,
        TXATTRWALK,
        TXATTRCREATE,
        TREADDIR,
        TFSYNC,
        TLOCK,
        TGETLOCK,
        TLINK,
        TMKDIR,
        TRENAMEAT,
        TUNLINKAT,
    ]
};

/// Every R-message type `decode_rframe` knows.
const R_TYPES: [u8; 29] = {
    use ty::*;
    [
        RLERROR,
        RVERSION,
        RAUTH,
        RATTACH,
        RFLUSH,
        RWALK,
        RREAD,
        RWRITE,
        RCLUNK,
        RREMOVE,
        RSTATFS,
        RLOPEN,
        RLCREATE,
        RSYMLINK,
        RMKNOD,
        RRENAME,
        RREADLINK,
        RGETATTR,
        RSETATTR,
        RXATTRWALK,
        RXATTRCREATE,
        RREADDIR,
        RFSYNC,
        RLOCK,
        RGETLOCK,
        RLINK,
        RMKDIR,
        RRENAMEAT,
        RUNLINKAT,
    ]
};

/// Cases per framed-fuzzing test.
const FRAMED_CASES: u32 = 20_000;

/// One field of a T-message body, as 9P2000.L lays it out.
#[derive(Clone, Copy, Debug)]
enum F {
    U8,
    U16,
    U32,
    U64,
    /// `len[2] bytes[len]`.
    Str,
    /// `count[4] bytes[count]`.
    Data,
    /// `nwname[2]` and that many `Str`s.
    Names,
}

/// The body layout of T-message type `t`, written from the protocol rather
/// than from the encoder, so the two check each other.
fn layout(t: u8) -> &'static [F] {
    use ty::*;
    use F::*;
    match t {
        TVERSION => &[U32, Str],
        TAUTH => &[U32, Str, Str, U32],
        TATTACH => &[U32, U32, Str, Str, U32],
        TFLUSH => &[U16],
        TWALK => &[U32, U32, Names],
        TREAD | TREADDIR => &[U32, U64, U32],
        TWRITE => &[U32, U64, Data],
        TCLUNK | TREMOVE | TSTATFS | TREADLINK => &[U32],
        TLOPEN | TFSYNC => &[U32, U32],
        TLCREATE => &[U32, Str, U32, U32, U32],
        TSYMLINK => &[U32, Str, Str, U32],
        TMKNOD => &[U32, Str, U32, U32, U32, U32],
        TRENAME | TXATTRWALK | TLINK => &[U32, U32, Str],
        TGETATTR => &[U32, U64],
        TSETATTR => &[U32, U32, U32, U32, U32, U64, U64, U64, U64, U64],
        TXATTRCREATE => &[U32, Str, U64, U32],
        TLOCK => &[U32, U8, U32, U64, U64, U32, Str],
        TGETLOCK => &[U32, U8, U64, U64, U32, Str],
        TMKDIR => &[U32, Str, U32, U32],
        TRENAMEAT => &[U32, Str, U32, Str],
        TUNLINKAT => &[U32, Str, U32],
        _ => &[],
    }
}

/// A string length, data count or walk name count in a body.
#[derive(Clone, Copy, Debug)]
struct LengthField {
    /// Offset in the body.
    at: usize,
    /// 2 or 4 bytes.
    width: usize,
    /// Twalk's `nwname` (at most 16), rather than a byte count.
    names: bool,
}

/// Little-endian integer of `width` bytes at `at`, if the body has them.
fn le(body: &[u8], at: usize, width: usize) -> Option<u64> {
    let b = body.get(at..at.checked_add(width)?)?;
    Some(b.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x)))
}

/// The length and count fields of `body` walked as type `t`'s layout, or
/// `None` unless the layout covers the body exactly.
fn length_fields(t: u8, body: &[u8]) -> Option<Vec<LengthField>> {
    let mut at = 0usize;
    let mut out = Vec::new();
    let string = |at: &mut usize, out: &mut Vec<LengthField>| -> Option<()> {
        let n = le(body, *at, 2)? as usize;
        out.push(LengthField {
            at: *at,
            width: 2,
            names: false,
        });
        *at += 2 + n;
        Some(())
    };
    for f in layout(t) {
        match f {
            F::U8 => at += 1,
            F::U16 => at += 2,
            F::U32 => at += 4,
            F::U64 => at += 8,
            F::Str => string(&mut at, &mut out)?,
            F::Data => {
                let n = le(body, at, 4)? as usize;
                out.push(LengthField {
                    at,
                    width: 4,
                    names: false,
                });
                at += 4 + n;
            }
            F::Names => {
                let n = le(body, at, 2)?;
                out.push(LengthField {
                    at,
                    width: 2,
                    names: true,
                });
                at += 2;
                for _ in 0..n {
                    string(&mut at, &mut out)?;
                }
            }
        }
    }
    (at == body.len()).then_some(out)
}

/// What is done to a valid body before it is decoded.
#[derive(Clone, Debug)]
enum Mutation {
    /// Nothing: the body must decode to the message encoded.
    None,
    /// Cut short at a point strictly inside the body.
    Truncate(Index),
    /// One length or count field raised by `by` (saturating at its width).
    Inflate { field: Index, by: u32 },
    /// Bytes XORed with non-zero masks.
    Flip(Vec<(Index, u8)>),
    /// Bytes added after the message.
    Append(Vec<u8>),
    /// The body sent under another known type.
    Retype(Index),
}

/// A generated frame body.
#[derive(Clone, Debug)]
enum Body<M> {
    /// Random bytes under type `ty`.
    Random { ty: u8, bytes: Vec<u8> },
    /// A valid encoding of `msg`, then mutated.
    Structured { msg: M, mutation: Mutation },
}

fn one_of(types: &[u8]) -> impl Strategy<Value = u8> {
    proptest::sample::select(types.to_vec())
}

fn none_of(types: &'static [u8]) -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("a known type", move |t| !types.contains(t))
}

fn mutation(inflate: bool) -> impl Strategy<Value = Mutation> {
    let by = prop_oneof![1u32..=8, 1u32..=u32::MAX];
    prop_oneof![
        2 => Just(Mutation::None),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        // Without a layout (R-messages), an inflation is a byte flip.
        2 => (any::<Index>(), by).prop_map(move |(field, by)| match inflate {
            true => Mutation::Inflate { field, by },
            false => Mutation::Flip(vec![(field, by as u8 | 1)]),
        }),
        2 => proptest::collection::vec((any::<Index>(), 1u8..=255), 1..=4).prop_map(Mutation::Flip),
        1 => proptest::collection::vec(any::<u8>(), 1..=8).prop_map(Mutation::Append),
        1 => any::<Index>().prop_map(Mutation::Retype),
    ]
}

fn body<M: Strategy>(
    known: &'static [u8],
    msg: M,
    inflate: bool,
) -> impl Strategy<Value = Body<M::Value>> {
    let random = |ty: BoxedStrategy<u8>| {
        (ty, proptest::collection::vec(any::<u8>(), 0..96))
            .prop_map(|(ty, bytes)| Body::Random { ty, bytes })
    };
    prop_oneof![
        3 => random(one_of(known).boxed()),
        1 => random(none_of(known).boxed()),
        10 => (msg, mutation(inflate)).prop_map(|(msg, mutation)| Body::Structured { msg, mutation }),
    ]
}

/// `size[4] type[1] tag[2] body` with the right size.
fn frame(t: u8, tag: u16, body: &[u8]) -> Vec<u8> {
    let size = (HEADER_SIZE + body.len()) as u32;
    let mut f = size.to_le_bytes().to_vec();
    f.push(t);
    f.extend_from_slice(&tag.to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// What the decoder must do with a frame.
#[derive(Debug)]
enum Expect<M> {
    /// Anything but panic (and an `Ok` must re-encode to the frame).
    Anything,
    /// Exactly this message.
    Exactly(M),
    /// Some error.
    Error,
    /// This error.
    ErrorOf(WireError),
}

impl<M: PartialEq + std::fmt::Debug> Expect<M> {
    /// Asserts the decoder's result `r` for a frame with `tag` is what was
    /// expected.
    fn check(self, r: Result<(u16, M), WireError>, tag: u16) -> Result<(), TestCaseError> {
        match self {
            Expect::Anything => {}
            Expect::Exactly(m) => prop_assert_eq!(r, Ok((tag, m))),
            Expect::Error => prop_assert!(r.is_err(), "{:?}", r),
            Expect::ErrorOf(e) => prop_assert_eq!(r, Err(e)),
        }
        Ok(())
    }
}

/// Per-type counts of what the decoder did with the generated frames.
#[derive(Default, Debug, Clone, Copy)]
struct TypeTally {
    /// Got past the frame check and the type dispatch.
    reached: usize,
    /// Decoded.
    ok: usize,
    /// Refused by the type's decoder.
    err: usize,
    /// Decoded to exactly the message expected: a valid body sent as
    /// encoded (or with a mutation that left it valid, like a Tfsync cut
    /// to its fid).
    exact: usize,
}

/// Counts over a whole run.
#[derive(Default)]
struct Tally {
    cases: usize,
    reached: usize,
    per_type: std::collections::BTreeMap<u8, TypeTally>,
}

impl Tally {
    fn record<M>(&mut self, t: u8, r: &Result<(u16, M), WireError>, exact: bool) -> bool {
        self.cases += 1;
        let reached = !matches!(
            r,
            Err(WireError::BadSize { .. } | WireError::UnknownType(_))
        );
        if reached {
            self.reached += 1;
            let e = self.per_type.entry(t).or_default();
            e.reached += 1;
            match r {
                Ok(_) => e.ok += 1,
                Err(_) => e.err += 1,
            }
            e.exact += usize::from(exact && r.is_ok());
        }
        reached
    }

    /// Prints the counts and checks that the generator reached every decoder
    /// in `known`, with both accepted and refused bodies, in more than 80% of
    /// the cases.
    fn check(&self, what: &str, known: &[u8]) {
        let pct = 100.0 * self.reached as f64 / self.cases as f64;
        eprintln!(
            "{what}: {} cases, {} ({pct:.1}%) reached a type's decoder",
            self.cases, self.reached
        );
        for (t, c) in &self.per_type {
            eprintln!("  type {t:3}: {c:?}");
        }
        assert_eq!(self.cases, FRAMED_CASES as usize, "{what}: every case ran");
        assert!(
            self.reached * 10 > self.cases * 8,
            "{what}: only {pct:.1}% of cases reached a type's decoder"
        );
        for t in known {
            let c = self.per_type.get(t).copied().unwrap_or_default();
            assert!(
                c.reached >= 200 && c.ok >= 20 && c.err >= 20 && c.exact >= 20,
                "{what}: type {t} was not exercised enough: {c:?}"
            );
        }
        let unknown: Vec<_> = self
            .per_type
            .keys()
            .filter(|t| !known.contains(t))
            .collect();
        assert!(
            unknown.is_empty(),
            "{what}: unknown types {unknown:?} were decoded"
        );
    }
}

/// Runs `test` on `FRAMED_CASES` cases of `strategy` and panics with the
/// (shrunk) failing case if one fails or panics.
fn run_framed<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = ProptestConfig {
        cases: FRAMED_CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if let Err(e) = proptest::test_runner::TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

/// Mutates valid body `b` of type `t`, the encoding of `m`: the type and
/// body to send, and what the decoder must do with them.
fn mutate_t<'m>(
    t: u8,
    m: Tmessage<'m>,
    mut b: Vec<u8>,
    mutation: &Mutation,
) -> Result<(u8, Vec<u8>, Expect<Tmessage<'m>>), TestCaseError> {
    let fields = length_fields(t, &b);
    prop_assert!(
        fields.is_some(),
        "the encoding of {:?} does not follow the protocol's layout",
        m
    );
    let fields = fields.unwrap();
    let expect = match mutation {
        Mutation::None => Expect::Exactly(m),
        Mutation::Truncate(i) => {
            let cut = i.index(b.len());
            b.truncate(cut);
            match m {
                // Older clients send no datasync: a 4-byte Tfsync is valid.
                Tmessage::Fsync { fid, .. } if cut == 4 => {
                    Expect::Exactly(Tmessage::Fsync { fid, datasync: 0 })
                }
                _ => Expect::Error,
            }
        }
        Mutation::Inflate { .. } if fields.is_empty() => Expect::Exactly(m),
        Mutation::Inflate { field, by } => {
            let f = fields[field.index(fields.len())];
            let old = le(&b, f.at, f.width).unwrap();
            let max = if f.width == 2 { 0xffff } else { 0xffff_ffff };
            let new = (old + u64::from(*by)).min(max);
            b[f.at..f.at + f.width].copy_from_slice(&new.to_le_bytes()[..f.width]);
            let left = (b.len() - f.at - f.width) as u64;
            match new {
                _ if new == old => Expect::Exactly(m),
                n if f.names && n > MAXWELEM as u64 => {
                    Expect::ErrorOf(WireError::TooManyNames(n as u16))
                }
                // More names or bytes than the whole rest of the body.
                n if n > left => Expect::Error,
                _ => Expect::Anything,
            }
        }
        Mutation::Flip(flips) => {
            for (i, mask) in flips {
                let i = i.index(b.len());
                b[i] ^= mask;
            }
            Expect::Anything
        }
        Mutation::Append(extra) => {
            b.extend_from_slice(extra);
            Expect::ErrorOf(WireError::Trailing(extra.len()))
        }
        Mutation::Retype(i) => {
            let nt = T_TYPES[i.index(T_TYPES.len())];
            if nt == t {
                Expect::Exactly(m)
            } else {
                return Ok((nt, b, Expect::Anything));
            }
        }
    };
    Ok((t, b, expect))
}

/// Decodes one generated T-frame and checks the result.
fn check_t_frame(body: &Body<TIn>, tag: u16, tally: &RefCell<Tally>) -> Result<(), TestCaseError> {
    let (t, b, expect) = match body {
        Body::Random { ty, bytes } => (*ty, bytes.clone(), Expect::Anything),
        Body::Structured { msg, mutation } => {
            let m = build(msg);
            let valid = m.encode(tag);
            mutate_t(m.type_number(), m, valid[HEADER_SIZE..].to_vec(), mutation)?
        }
    };
    let f = frame(t, tag, &b);
    let r = decode_tframe(&f);
    let exact = matches!(expect, Expect::Exactly(_));
    let reached = tally.borrow_mut().record(t, &r, exact);
    prop_assert_eq!(reached, T_TYPES.contains(&t), "type {} gave {:?}", t, r);
    if !reached {
        prop_assert_eq!(r, Err(WireError::UnknownType(t)));
        return Ok(());
    }
    if let Ok((rtag, m)) = &r {
        prop_assert_eq!(*rtag, tag);
        prop_assert_eq!(m.type_number(), t);
        // What decodes is the canonical encoding of what it decodes to (bar
        // Tfsync without datasync, which the encoder always writes).
        if !(t == ty::TFSYNC && b.len() == 4) {
            prop_assert_eq!(&m.encode(tag), &f, "{:?}", m);
        }
    }
    expect.check(r, tag)
}

#[test]
fn t_frames_never_panic_the_decoder() {
    let tally = RefCell::new(Tally::default());
    run_framed(
        (body(&T_TYPES, tin(), true), any::<u16>()),
        |(body, tag)| check_t_frame(&body, tag, &tally),
    );
    tally.into_inner().check("T-frames", &T_TYPES);
}

/// Decodes one generated R-frame and checks the result.
fn check_r_frame(
    body: &Body<Rmessage>,
    tag: u16,
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let (t, b, expect) = match body {
        Body::Random { ty, bytes } => (*ty, bytes.clone(), Expect::Anything),
        Body::Structured { msg, mutation } => {
            let t = msg.type_number();
            let mut b = msg.encode(tag)[HEADER_SIZE..].to_vec();
            match mutation {
                Mutation::None | Mutation::Inflate { .. } => (t, b, Expect::Exactly(msg.clone())),
                _ if b.is_empty() && !matches!(mutation, Mutation::Append(_)) => {
                    (t, b, Expect::Exactly(msg.clone()))
                }
                Mutation::Truncate(i) => {
                    b.truncate(i.index(b.len()));
                    (t, b, Expect::Error)
                }
                Mutation::Flip(flips) => {
                    for (i, mask) in flips {
                        let i = i.index(b.len());
                        b[i] ^= mask;
                    }
                    (t, b, Expect::Anything)
                }
                Mutation::Append(extra) => {
                    b.extend_from_slice(extra);
                    (t, b, Expect::ErrorOf(WireError::Trailing(extra.len())))
                }
                Mutation::Retype(i) => match R_TYPES[i.index(R_TYPES.len())] {
                    nt if nt == t => (t, b, Expect::Exactly(msg.clone())),
                    nt => (nt, b, Expect::Anything),
                },
            }
        }
    };
    let f = frame(t, tag, &b);
    let r = decode_rframe(&f);
    let exact = matches!(expect, Expect::Exactly(_));
    let reached = tally.borrow_mut().record(t, &r, exact);
    prop_assert_eq!(reached, R_TYPES.contains(&t), "type {} gave {:?}", t, r);
    if !reached {
        prop_assert_eq!(r, Err(WireError::UnknownType(t)));
        return Ok(());
    }
    if let Ok((rtag, m)) = &r {
        prop_assert_eq!(*rtag, tag);
        prop_assert_eq!(m.type_number(), t);
        prop_assert_eq!(&m.encode(tag), &f, "{:?}", m);
    }
    expect.check(r, tag)
}

#[test]
fn r_frames_never_panic_the_decoder() {
    let tally = RefCell::new(Tally::default());
    run_framed(
        (body(&R_TYPES, rmessage(), false), any::<u16>()),
        |(body, tag)| check_r_frame(&body, tag, &tally),
    );
    tally.into_inner().check("R-frames", &R_TYPES);
}

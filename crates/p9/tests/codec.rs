//! Property tests of the codec: every T- and R-message round-trips, and no
//! byte sequence makes the decoder panic or read past the frame.

use p9::messages::*;
use p9::wire::Qid;
use proptest::prelude::*;

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

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
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

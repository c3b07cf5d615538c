//! Every 9P2000.L message, T and R, encoded once with distinct field values
//! and compared byte for byte with the encoding the hand-written codec
//! produced before the message table became a macro (so a change of field
//! order, width or framing shows up here, not only as a round-trip that
//! agrees with itself). Each frame must also decode back to its message.

use p9::messages::*;
use p9::wire::Qid;

const Q1: Qid = Qid {
    ty: 0x80,
    version: 0x0102_0304,
    path: 0x1112_1314_1516_1718,
};
const Q2: Qid = Qid {
    ty: 0x02,
    version: 0x2122_2324,
    path: 0x3132_3334_3536_3738,
};

fn lock<S>(client_id: S) -> Lock<S> {
    Lock {
        ty: 0x41,
        start: 0x4243_4445_4647_4849,
        length: 0x5152_5354_5556_5758,
        proc_id: 0x6162_6364,
        client_id,
    }
}

/// One of every T-message, in type order.
fn t_messages() -> Vec<Tmessage<'static>> {
    vec![
        Tmessage::Statfs { fid: 0x0a0b_0c0d },
        Tmessage::Lopen {
            fid: 1,
            flags: 0x0002_0002,
        },
        Tmessage::Lcreate {
            fid: 2,
            name: b"new",
            flags: 0x42,
            mode: 0o644,
            gid: 1000,
        },
        Tmessage::Symlink {
            fid: 3,
            name: b"ln",
            target: b"../t",
            gid: 1001,
        },
        Tmessage::Mknod {
            dfid: 4,
            name: b"fifo",
            mode: 0o10644,
            major: 8,
            minor: 9,
            gid: 1002,
        },
        Tmessage::Rename {
            fid: 5,
            dfid: 6,
            name: b"moved",
        },
        Tmessage::Readlink { fid: 7 },
        Tmessage::Getattr {
            fid: 8,
            mask: 0x0000_3fff_0000_07ff,
        },
        Tmessage::Setattr {
            fid: 9,
            attr: SetAttr {
                valid: 0x1ff,
                mode: 0o600,
                uid: 11,
                gid: 12,
                size: 0x0102_0304_0506_0708,
                atime_sec: 13,
                atime_nsec: 14,
                mtime_sec: 15,
                mtime_nsec: 16,
            },
        },
        Tmessage::XattrWalk {
            fid: 10,
            newfid: 11,
            name: b"user.a",
        },
        Tmessage::XattrCreate {
            fid: 12,
            name: b"user.b",
            size: 0x1_0000,
            flags: 1,
        },
        Tmessage::Readdir {
            fid: 13,
            offset: 0xffff_ffff_0000_0001,
            count: 8168,
        },
        Tmessage::Fsync {
            fid: 14,
            datasync: 1,
        },
        Tmessage::Lock {
            fid: 15,
            flags: 0x7172_7374,
            lock: lock(&b"host"[..]),
        },
        Tmessage::GetLock {
            fid: 16,
            lock: lock(&b"peer"[..]),
        },
        Tmessage::Link {
            dfid: 17,
            fid: 18,
            name: b"hard",
        },
        Tmessage::Mkdir {
            dfid: 19,
            name: b"dir",
            mode: 0o755,
            gid: 1003,
        },
        Tmessage::Renameat {
            olddirfid: 20,
            oldname: b"a",
            newdirfid: 21,
            newname: b"bb",
        },
        Tmessage::Unlinkat {
            dirfid: 22,
            name: b"gone",
            flags: 0x200,
        },
        Tmessage::Version {
            msize: 0x0040_0000,
            version: b"9P2000.L",
        },
        Tmessage::Auth {
            afid: 23,
            uname: b"user",
            aname: b"/srv",
            n_uname: 1000,
        },
        Tmessage::Attach {
            fid: 24,
            afid: NOFID,
            uname: b"root",
            aname: b"",
            n_uname: 0,
        },
        Tmessage::Flush { oldtag: 0x1234 },
        Tmessage::Walk {
            fid: 25,
            newfid: 26,
            names: vec![b"a", b"", b"ccc"],
        },
        Tmessage::Read {
            fid: 27,
            offset: 0x0807_0605_0403_0201,
            count: 0x0001_0000,
        },
        Tmessage::Write {
            fid: 28,
            offset: 4096,
            data: b"\0\x01data\xff",
        },
        Tmessage::Clunk { fid: 29 },
        Tmessage::Remove { fid: 30 },
    ]
}

/// One of every R-message, in type order.
fn r_messages() -> Vec<Rmessage> {
    vec![
        Rmessage::Lerror { ecode: 95 },
        Rmessage::Statfs(StatFs {
            ty: 0x0102_1997,
            bsize: 4096,
            blocks: 0x0102_0304_0506_0708,
            bfree: 2,
            bavail: 3,
            files: 4,
            ffree: 5,
            fsid: 0x1112_1314_1516_1718,
            namelen: 255,
        }),
        Rmessage::Lopen {
            qid: Q1,
            iounit: 0x0010_0000,
        },
        Rmessage::Lcreate { qid: Q2, iounit: 7 },
        Rmessage::Symlink { qid: Q1 },
        Rmessage::Mknod { qid: Q2 },
        Rmessage::Rename,
        Rmessage::Readlink {
            target: b"/a/b".to_vec(),
        },
        Rmessage::Getattr(Attr {
            valid: 0x3fff,
            qid: Q1,
            mode: 0o100644,
            uid: 1,
            gid: 2,
            nlink: 3,
            rdev: 4,
            size: 5,
            blksize: 6,
            blocks: 7,
            atime_sec: 8,
            atime_nsec: 9,
            mtime_sec: 10,
            mtime_nsec: 11,
            ctime_sec: 12,
            ctime_nsec: 13,
            btime_sec: 14,
            btime_nsec: 15,
            gen: 16,
            data_version: 0x0102_0304_0506_0708,
        }),
        Rmessage::Setattr,
        Rmessage::XattrWalk {
            size: 0x0000_0001_0000_0002,
        },
        Rmessage::XattrCreate,
        Rmessage::Readdir {
            data: b"\x01\x02\x03".to_vec(),
        },
        Rmessage::Fsync,
        Rmessage::Lock { status: 1 },
        Rmessage::GetLock(lock(b"other".to_vec())),
        Rmessage::Link,
        Rmessage::Mkdir { qid: Q2 },
        Rmessage::Renameat,
        Rmessage::Unlinkat,
        Rmessage::Version {
            msize: 65536,
            version: b"9P2000.L".to_vec(),
        },
        Rmessage::Auth { aqid: Q2 },
        Rmessage::Attach { qid: Q1 },
        Rmessage::Flush,
        Rmessage::Walk { qids: vec![Q1, Q2] },
        Rmessage::Read {
            data: b"read me".to_vec(),
        },
        Rmessage::Write { count: 0x0102_0304 },
        Rmessage::Clunk,
        Rmessage::Remove,
    ]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `every_message`'s T-messages under tag 0xa55a, as the hand-written
/// encoder produced them.
const T_GOLDEN: [&str; 28] = [
    "0b000000085aa50d0c0b0a",
    "0f0000000c5aa50100000002000200",
    "1c0000000e5aa50200000003006e657742000000a4010000e8030000",
    "19000000105aa50300000002006c6e04002e2e2f74e9030000",
    "21000000125aa50400000004006669666fa41100000800000009000000ea030000",
    "16000000145aa5050000000600000005006d6f766564",
    "0b000000165aa507000000",
    "13000000185aa508000000ff070000ff3f0000",
    "430000001a5aa509000000ff010000800100000b0000000c00000008070605040302010d000000000000000e000000000000000f000000000000001000000000000000",
    "170000001e5aa50a0000000b0000000600757365722e61",
    "1f000000205aa50c0000000600757365722e62000001000000000001000000",
    "17000000285aa50d00000001000000ffffffffe81f0000",
    "0f000000325aa50e00000001000000",
    "2a000000345aa50f000000417473727149484746454443425857565554535251646362610400686f7374",
    "26000000365aa510000000414948474645444342585756555453525164636261040070656572",
    "15000000465aa51100000012000000040068617264",
    "18000000485aa5130000000300646972ed010000eb030000",
    "160000004a5aa5140000000100611500000002006262",
    "150000004c5aa5160000000400676f6e6500020000",
    "15000000645aa50000400008003950323030302e4c",
    "1b000000665aa51700000004007573657204002f737276e8030000",
    "1b000000685aa518000000ffffffff0400726f6f74000000000000",
    "090000006c5aa53412",
    "1b0000006e5aa5190000001a000000030001006100000300636363",
    "17000000745aa51b000000010203040506070800000100",
    "1e000000765aa51c000000001000000000000007000000000164617461ff",
    "0b000000785aa51d000000",
    "0b0000007a5aa51e000000",
];

/// `every_message`'s R-messages under tag 0x5aa5, likewise.
const R_GOLDEN: [&str; 29] = [
    "0b00000007a55a5f000000",
    "4300000009a55a9719020100100000080706050403020102000000000000000300000000000000040000000000000005000000000000001817161514131211ff000000",
    "180000000da55a8004030201181716151413121100001000",
    "180000000fa55a0224232221383736353433323107000000",
    "1400000011a55a80040302011817161514131211",
    "1400000013a55a02242322213837363534333231",
    "0700000015a55a",
    "0d00000017a55a04002f612f62",
    "a000000019a55aff3f00000000000080040302011817161514131211a4810000010000000200000003000000000000000400000000000000050000000000000006000000000000000700000000000000080000000000000009000000000000000a000000000000000b000000000000000c000000000000000d000000000000000e000000000000000f0000000000000010000000000000000807060504030201",
    "070000001ba55a",
    "0f0000001fa55a0200000001000000",
    "0700000021a55a",
    "0e00000029a55a03000000010203",
    "0700000033a55a",
    "0800000035a55a01",
    "2300000037a55a41494847464544434258575655545352516463626105006f74686572",
    "0700000047a55a",
    "1400000049a55a02242322213837363534333231",
    "070000004ba55a",
    "070000004da55a",
    "1500000065a55a0000010008003950323030302e4c",
    "1400000067a55a02242322213837363534333231",
    "1400000069a55a80040302011817161514131211",
    "070000006da55a",
    "230000006fa55a02008004030201181716151413121102242322213837363534333231",
    "1200000075a55a0700000072656164206d65",
    "0b00000077a55a04030201",
    "0700000079a55a",
    "070000007ba55a",
];

#[test]
fn every_t_message_encodes_as_before_and_decodes_back() {
    let msgs = t_messages();
    assert_eq!(msgs.len(), T_GOLDEN.len());
    let mut types: Vec<u8> = msgs.iter().map(Tmessage::type_number).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), 28, "one of every T-message");
    for (m, want) in msgs.iter().zip(T_GOLDEN) {
        let frame = m.encode(0xa55a);
        assert_eq!(hex(&frame), want, "{m:?}");
        assert_eq!(decode_tframe(&frame).unwrap(), (0xa55a, m.clone()));
    }
}

#[test]
fn every_r_message_encodes_as_before_and_decodes_back() {
    let msgs = r_messages();
    assert_eq!(msgs.len(), R_GOLDEN.len());
    let mut types: Vec<u8> = msgs.iter().map(Rmessage::type_number).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), 29, "one of every R-message");
    for (m, want) in msgs.iter().zip(R_GOLDEN) {
        let frame = m.encode(0x5aa5);
        assert_eq!(hex(&frame), want, "{m:?}");
        assert_eq!(decode_rframe(&frame).unwrap(), (0x5aa5, m.clone()));
        let mut batch = vec![0xee];
        m.encode_into(0x5aa5, &mut batch);
        assert_eq!(&batch[1..], &frame[..]);
    }
}

#[test]
fn data_reply_headers_are_as_before() {
    for (read, res, size, want) in [
        (true, 5, 16, "1000000075341205000000"),
        (true, 0, 11, "0b00000075341200000000"),
        (false, 4096, 11, "0b00000077341200100000"),
        (true, -5, 11, "0b00000007341205000000"),
        (false, -28, 11, "0b0000000734121c000000"),
    ] {
        let (h, n) = data_reply_header(read, 0x1234, res);
        assert_eq!((hex(&h), n), (want.to_string(), size), "{read} {res}");
    }
}

#[test]
fn data_requests_parse_from_the_fixed_part() {
    let head = |f: &[u8]| -> [u8; TWRITE_HEADER] { f[..TWRITE_HEADER].try_into().unwrap() };
    let read = Tmessage::Read {
        fid: 3,
        offset: 0x0102_0304,
        count: 4096,
    }
    .encode(9);
    assert_eq!(
        DataRequest::parse(&head(&read), read.len()),
        Some(DataRequest {
            read: true,
            tag: 9,
            fid: 3,
            offset: 0x0102_0304,
            count: 4096,
        })
    );
    // The frame's length must be the size field's.
    assert_eq!(DataRequest::parse(&head(&read), read.len() + 1), None);
    let write = Tmessage::Write {
        fid: 4,
        offset: 10,
        data: b"abcdef",
    }
    .encode(7);
    assert_eq!(
        DataRequest::parse(&head(&write), write.len()),
        Some(DataRequest {
            read: false,
            tag: 7,
            fid: 4,
            offset: 10,
            count: 6,
        })
    );
    // A count that disagrees with the size, an offset past i64::MAX, or
    // another type: for the decoder.
    let mut short = write.clone();
    short.pop();
    let n = short.len() as u32;
    short[..4].copy_from_slice(&n.to_le_bytes());
    assert_eq!(DataRequest::parse(&head(&short), short.len()), None);
    let far = Tmessage::Read {
        fid: 3,
        offset: i64::MAX as u64,
        count: 1,
    }
    .encode(1);
    assert_eq!(DataRequest::parse(&head(&far), far.len()), None);
    let readdir = Tmessage::Readdir {
        fid: 3,
        offset: 0,
        count: 1,
    }
    .encode(1);
    assert_eq!(DataRequest::parse(&head(&readdir), readdir.len()), None);
}

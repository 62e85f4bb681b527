//! Feeds arbitrary bytes as a TPACKET_V3 receive-ring block (and as the
//! start of a block laid out like the kernel's) through the ring walk:
//! nothing may panic, and every frame handed out must lie inside the block.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netbridge::port::packet::RecvInfo;
use netbridge::port::ring::{walk_block, Walked};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut block = rest.to_vec();
    // Half the time, a plausible block header (one frame or a few at 48),
    // so the frame checks are reached more often than by chance.
    if sel & 1 == 1 && block.len() >= 20 {
        block[12..16].copy_from_slice(&u32::from(sel >> 4).to_ne_bytes());
        block[16..20].copy_from_slice(&48u32.to_ne_bytes());
    }
    let vnet = sel & 2 != 0;
    let len = block.len();
    let mut w = Walked::default();
    walk_block(
        &mut block,
        vnet,
        &mut |buf: &mut [u8], i: RecvInfo| {
            assert!(buf.len() <= len);
            assert!(i.start + i.len <= buf.len());
            buf[i.start..i.start + i.len].iter_mut().for_each(|b| *b ^= 0xff);
        },
        &mut w,
    );
    assert!(w.frames <= len / 48 + 1);
});

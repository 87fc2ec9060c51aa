// Fjord's patch (see FJORD-PATCH.md at the crate root): the process-wide
// barrier glommio took before every sleep (`membarrier`, an IPI to every
// core the process runs on) is a `SeqCst` fence here, paired with one in
// `SleepNotifier::notify` on the waking side.
//
// The pattern is Dekker's: the sleeper stores "notify me" and then checks
// its channels; a sender pushes into a channel and then checks "notify
// me". With a `SeqCst` fence between the store and the load on both
// sides, at least one of them sees the other's store, so a message is
// never left unnoticed by a sleeping executor. The heavy barrier let the
// senders skip their fence, at the cost of an interrupt on every other
// core at every sleep; in a virtual machine each one is a VM exit on both
// ends.

use core::sync::atomic;

/// The sleeper's side of the barrier: orders its "notify me" store before
/// its checks of the channels.
#[inline]
pub(crate) fn heavy() {
    atomic::fence(atomic::Ordering::SeqCst);
}

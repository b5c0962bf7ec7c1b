// The set of descriptor types is sealed: outside mm no new type can be
// made a `FrameDesc` (and so no `Frame<Mine>` can view a page as `Mine`).
use kernel::mm::frame::FrameDesc;

fn main() {}

pub struct Mine;

impl FrameDesc for Mine {}

pub fn case(_: kernel::mm::frame::Frame<Mine>) {}

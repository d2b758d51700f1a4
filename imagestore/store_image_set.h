// Image sets in a memstore: the engine's image-set interface (engine/images/image_set.h)
// over the store's named blobs (memstore/store.h). The one place where the two meet; the
// kleap CLI, kleapd and kleap-init use it, and neither the engine nor the store knows the
// other.
#pragma once

#include <memory>

#include "engine/base/result.h"
#include "engine/images/image_set.h"
#include "memstore/store.h"

namespace kleap::imagestore {

// Starts a new generation of the store in `region` (the old one is invalid from here on)
// and writes an image set into it; Commit writes the inventory, then the store's commit.
Result<std::unique_ptr<ImageWriter>> CreateStoreImageSet(std::unique_ptr<memstore::Region> region);
// The image set of the store in `region`: its table checked and its inventory verified.
Result<std::unique_ptr<ImageReader>> OpenStoreImageSet(std::unique_ptr<memstore::Region> region);

}  // namespace kleap::imagestore

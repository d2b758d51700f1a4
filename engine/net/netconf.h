// The network configuration of a network namespace as an image kind of its own:
// links, addresses, routes, rules, hand-made neighbours, net.ipv4/net.ipv6 sysctls
// and the nftables ruleset (docs/network.md).
#pragma once

#include <string>

#include "engine/base/result.h"
#include "engine/images/image_set.h"
#include "engine/net/netns.h"

namespace kleap::net {

inline constexpr char kNetNsImage[] = "netns.img";

// Reads the namespace's configuration and writes netns.img and the inventory.
// Refuses, naming the object, anything it can't carry.
Result<void> DumpNetns(const NetnsRef& ns, ImageWriter& images);
// The same without the commit: netns.img as one image of a larger set (an upgrade's).
Result<void> WriteNetnsImage(const NetnsRef& ns, ImageWriter& images);

// Applies the image to the namespace. Everything is checked against what the
// namespace already holds before anything is applied; a conflict is refused with the
// object named, and a failure half-way is undone.
Result<void> RestoreNetns(const NetnsRef& ns, ImageReader& images);

// Checks a network image set without applying it: every image listed, whole (its
// checksum) and decodable, and nothing else in the set.
Result<void> ValidateNetImage(ImageReader& images);

// The image for people (text) or programs (JSON).
Result<std::string> ShowNetImage(ImageReader& images, bool json);

}  // namespace kleap::net

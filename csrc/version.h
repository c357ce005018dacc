// The mmedge version string, compiled in. CMakeLists.txt defines MMEDGE_VERSION from `version` in
// pyproject.toml, for mmedge_core's own sources only; everything else calls mmedge::version().
#pragma once

#ifndef MMEDGE_VERSION
#error "MMEDGE_VERSION is defined by CMakeLists.txt (from pyproject.toml) for mmedge_core sources"
#endif

namespace mmedge {

inline constexpr char kVersion[] = MMEDGE_VERSION;

}  // namespace mmedge

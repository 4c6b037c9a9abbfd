// Which layers each pipeline stage holds (DeepSpeed's PipelineModule partition_method): contiguous ranges of the
// model's layer list, one per stage.
//   "parameters" (DeepSpeed's default; the config's "best" means it too): balanced by parameter count, the tied
//                embedding counted in both places it is used, as DeepSpeed counts a TiedLayerSpec where it is built;
//   "uniform":   the same number of layers per stage, the first stages one more when it does not divide;
//   "type:REGEX": balanced over the layers whose class name matches REGEX (case-insensitive), e.g.
//                "type:transformer"; a REGEX that matches no layer is an error, as in DeepSpeed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::pipe {

struct Layer {
  std::string type;    // the layer's class name (Block::type_name)
  int64_t params = 0;  // parameters it uses
};

// Stage boundaries: stage s holds layers [bounds[s], bounds[s+1]); bounds has stages + 1 entries. ConfigError for
// an unknown method, fewer layers than stages, or a type that matches nothing.
std::vector<int> partition_layers(const std::vector<Layer>& layers, const std::string& method, int stages);

}  // namespace ds::pipe

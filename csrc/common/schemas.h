// The esr_native operator schemas, compiled into every native extension (_C_cpu, _C_cuda).
#pragma once

namespace esr_schemas {

// Defines each esr_native schema that this process does not have yet, so whichever extension
// is imported first defines them and the other finds them (TORCH_LIBRARY may appear only once
// per namespace per process; a CPU-only or CUDA-only build works alone). A schema already
// defined differently (extensions from different builds) is an error. Called from each
// extension's PyInit, under the GIL.
void define();

}  // namespace esr_schemas

// aoti_runner: runs an AOTInductor package (.pt2) from C++, without Python.
//
//   aoti_runner MODEL.pt2 INPUTS.pt OUTPUTS.pt
//
// INPUTS.pt holds the model's positional inputs as saved from Python by torch.save([t0, t1, ...]) (a list or tuple
// of tensors, or a single tensor); OUTPUTS.pt receives the outputs as a tuple of CPU tensors that torch.load reads.
// Inputs are moved to the device the package was compiled for.
//
// A package made from a model with fused Ghost modules calls ghostkernels::ghost_module through AOTInductor's
// proxy executor, which looks the op up in the dispatcher at run time. The op exists only if libghostkernels is
// loaded: this program links ghostkernels::ghostkernels (which keeps the library even under --as-needed) and checks
// the registration up front, so a missing library gives a clear message instead of a failure deep inside run().
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The tensors of a torch.save'd tensor, list of tensors or tuple of tensors, in order.
std::vector<at::Tensor> load_tensors(const std::string& path) {
  const c10::IValue value = torch::jit::pickle_load(read_file(path));
  std::vector<at::Tensor> tensors;
  auto add = [&](const c10::IValue& v) {
    if (!v.isTensor()) throw std::runtime_error(path + ": expected only tensors, found a " + v.tagKind());
    tensors.push_back(v.toTensor());
  };
  if (value.isTensor()) {
    add(value);
  } else if (value.isList()) {
    for (const c10::IValue& v : value.toListRef()) add(v);
  } else if (value.isTuple()) {
    for (const c10::IValue& v : value.toTupleRef().elements()) add(v);
  } else {
    throw std::runtime_error(path + ": expected a tensor or a list/tuple of tensors, found a " + value.tagKind());
  }
  return tensors;
}

// Saved as a tuple of CPU tensors: a c10::List<Tensor> would pickle through torch.jit._pickle.build_tensorlist, which
// torch.load(weights_only=True) refuses.
void save_tensors(const std::vector<at::Tensor>& tensors, const std::string& path) {
  std::vector<c10::IValue> items;
  for (const at::Tensor& t : tensors) items.emplace_back(t.cpu());
  const std::vector<char> bytes = torch::jit::pickle_save(c10::ivalue::Tuple::create(std::move(items)));
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void require_ghostkernels_ops() {
  if (!c10::Dispatcher::singleton().findSchema({"ghostkernels::ghost_module", ""})) {
    throw std::runtime_error(
        "the ghostkernels ops are not registered: libghostkernels was not loaded (link ghostkernels::ghostkernels, "
        "which passes --no-as-needed, or dlopen libghostkernels.so before loading the package)");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 INPUTS.pt OUTPUTS.pt\n";
    return 2;
  }
  try {
    require_ghostkernels_ops();
    if (!std::ifstream(argv[1])) throw std::runtime_error(std::string("cannot open the package ") + argv[1]);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const auto metadata = loader.get_metadata();
    const auto device_it = metadata.find("AOTI_DEVICE_KEY");
    const c10::Device device(device_it == metadata.end() ? std::string("cpu") : device_it->second);

    std::vector<at::Tensor> inputs = load_tensors(argv[2]);
    for (at::Tensor& t : inputs) t = t.to(device);
    const std::vector<at::Tensor> outputs = loader.run(inputs);
    save_tensors(outputs, argv[3]);
    std::cout << "ran " << argv[1] << " on " << device << ": " << inputs.size() << " input(s) -> " << outputs.size()
              << " output(s)\n";
  } catch (const c10::Error& e) {
    std::cerr << "aoti_runner: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "aoti_runner: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

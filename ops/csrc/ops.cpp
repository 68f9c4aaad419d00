// Python binding for the StyleCLIP custom ops. Validates arguments, makes inputs contiguous and
// forwards to ops_kernel.cu. Autograd lives in Python (ops/_autograd.py): every function here is
// a plain forward computation.
//
//   upfirdn2d(x[N,C,H,W], kernel[kh,kw], up, down, px0, px1, py0, py1) -> [N,C,out_h,out_w]
//   bias_act(x[N,C,...], bias[C] | None, slope, scale)                  -> leaky(x+bias)*scale
//   leaky_grad(g[N,C,...], out[N,C,...], slope, scale)                  -> g * d out/d pre
//
// The emu_* twins take CPU float32/float64 tensors and run the same per-element code on the host.

#include <torch/extension.h>

#include <optional>

namespace styleclip_ops {
at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int up, int down,
                          int px0, int px1, int py0, int py1);
at::Tensor bias_act_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                         double slope, double scale, int mode);
at::Tensor upfirdn2d_host(const at::Tensor& x, const at::Tensor& kernel, int up, int down,
                          int px0, int px1, int py0, int py1);
at::Tensor bias_act_host(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                         double slope, double scale, int mode);
}  // namespace styleclip_ops

namespace {

constexpr int64_t kMaxSharedBytes = 48 * 1024;  // default dynamic shared memory per block

// The kernel taps are read in the accumulation type: float for half/bfloat16/float, double for
// double (the reference casts the taps to x's dtype; accumulating in float is the safer choice).
at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_device(const at::Tensor& t, bool cuda, const char* name) {
  if (cuda) {
    TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  } else {
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor (emulation path)");
  }
}

at::Tensor upfirdn2d_impl(const at::Tensor& x, const at::Tensor& kernel, int64_t up,
                          int64_t down, int64_t px0, int64_t px1, int64_t py0, int64_t py1,
                          bool cuda) {
  check_device(x, cuda, "upfirdn2d: x");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be [N, C, H, W], got ", x.dim(), " dims");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be [kh, kw], got ", kernel.dim(), " dims");
  TORCH_CHECK(up >= 1 && down >= 1, "upfirdn2d: up and down must be >= 1, got ", up, ", ", down);
  TORCH_CHECK(x.is_floating_point(), "upfirdn2d: x must be floating point");
  TORCH_CHECK(kernel.numel() > 0, "upfirdn2d: empty kernel");
  TORCH_CHECK(x.size(2) * up < (1LL << 30) && x.size(3) * up < (1LL << 30),
              "upfirdn2d: spatial size too large for 32-bit indexing");
  const auto kdt = acc_dtype(x.scalar_type());
  TORCH_CHECK(kernel.numel() * static_cast<int64_t>(at::elementSize(kdt)) <= kMaxSharedBytes,
              "upfirdn2d: kernel too large (", kernel.size(0), "x", kernel.size(1), ")");
  const at::Tensor k = kernel.to(x.device(), kdt).contiguous();
  const at::Tensor xc = x.contiguous();
  const int args[] = {int(up), int(down), int(px0), int(px1), int(py0), int(py1)};
  return cuda ? styleclip_ops::upfirdn2d_cuda(xc, k, args[0], args[1], args[2], args[3], args[4], args[5])
              : styleclip_ops::upfirdn2d_host(xc, k, args[0], args[1], args[2], args[3], args[4], args[5]);
}

at::Tensor bias_act_impl(const at::Tensor& x, const std::optional<at::Tensor>& bias, double slope,
                         double scale, bool cuda) {
  check_device(x, cuda, "bias_act: x");
  TORCH_CHECK(x.dim() >= 2, "bias_act: x must be [N, C, ...]");
  TORCH_CHECK(x.is_floating_point(), "bias_act: x must be floating point");
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(1), "bias_act: bias must be [C] with C = ",
                x.size(1), ", got ", bias->sizes());
    b = bias->to(x.device(), x.scalar_type()).contiguous();
  }
  const at::Tensor xc = x.contiguous();
  return cuda ? styleclip_ops::bias_act_cuda(xc, at::Tensor(), b, slope, scale, 0)
              : styleclip_ops::bias_act_host(xc, at::Tensor(), b, slope, scale, 0);
}

at::Tensor leaky_grad_impl(const at::Tensor& g, const at::Tensor& out, double slope, double scale,
                           bool cuda) {
  check_device(g, cuda, "leaky_grad: g");
  check_device(out, cuda, "leaky_grad: out");
  TORCH_CHECK(g.sizes() == out.sizes(), "leaky_grad: g and out shapes differ: ", g.sizes(), " vs ",
              out.sizes());
  TORCH_CHECK(g.dim() >= 2, "leaky_grad: g must be [N, C, ...]");
  TORCH_CHECK(slope >= 0, "leaky_grad: negative_slope must be >= 0 (sign recovered from output)");
  const at::Tensor gc = g.contiguous();
  const at::Tensor oc = out.to(g.scalar_type()).contiguous();
  return cuda ? styleclip_ops::bias_act_cuda(gc, oc, at::Tensor(), slope, scale, 1)
              : styleclip_ops::bias_act_host(gc, oc, at::Tensor(), slope, scale, 1);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "StyleCLIP custom ops: upfirdn2d and bias + leaky ReLU (CUDA, plus CPU emulation)";
  namespace py = pybind11;
  m.def("upfirdn2d",
        [](const at::Tensor& x, const at::Tensor& k, int64_t up, int64_t down, int64_t px0,
           int64_t px1, int64_t py0, int64_t py1) {
          return upfirdn2d_impl(x, k, up, down, px0, px1, py0, py1, true);
        },
        "upfirdn2d forward (CUDA)", py::arg("x"), py::arg("kernel"), py::arg("up"),
        py::arg("down"), py::arg("px0"), py::arg("px1"), py::arg("py0"), py::arg("py1"));
  m.def("bias_act",
        [](const at::Tensor& x, const std::optional<at::Tensor>& bias, double slope, double scale) {
          return bias_act_impl(x, bias, slope, scale, true);
        },
        "leaky_relu(x + bias) * scale (CUDA)", py::arg("x"), py::arg("bias"), py::arg("slope"),
        py::arg("scale"));
  m.def("leaky_grad",
        [](const at::Tensor& g, const at::Tensor& out, double slope, double scale) {
          return leaky_grad_impl(g, out, slope, scale, true);
        },
        "gradient of bias_act w.r.t. its input, from the saved output (CUDA)", py::arg("g"),
        py::arg("out"), py::arg("slope"), py::arg("scale"));
  m.def("emu_upfirdn2d",
        [](const at::Tensor& x, const at::Tensor& k, int64_t up, int64_t down, int64_t px0,
           int64_t px1, int64_t py0, int64_t py1) {
          return upfirdn2d_impl(x, k, up, down, px0, px1, py0, py1, false);
        },
        "CPU emulation of upfirdn2d", py::arg("x"), py::arg("kernel"), py::arg("up"),
        py::arg("down"), py::arg("px0"), py::arg("px1"), py::arg("py0"), py::arg("py1"));
  m.def("emu_bias_act",
        [](const at::Tensor& x, const std::optional<at::Tensor>& bias, double slope, double scale) {
          return bias_act_impl(x, bias, slope, scale, false);
        },
        "CPU emulation of bias_act", py::arg("x"), py::arg("bias"), py::arg("slope"),
        py::arg("scale"));
  m.def("emu_leaky_grad",
        [](const at::Tensor& g, const at::Tensor& out, double slope, double scale) {
          return leaky_grad_impl(g, out, slope, scale, false);
        },
        "CPU emulation of leaky_grad", py::arg("g"), py::arg("out"), py::arg("slope"),
        py::arg("scale"));
}

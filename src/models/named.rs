//! Walks a module's parameters under their diffusers names (for saving and counting).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Rust field names that stand for diffusers `ModuleList` entries, which are not valid
/// identifiers; everything else in the module tree is spelled as in diffusers.
const LIST_FIELDS: [(&str, &str); 3] = [("to_out_0", "to_out.0"), ("net_0", "net.0"), ("net_2", "net.2")];

pub(crate) fn segment(name: &str) -> &str {
    LIST_FIELDS.iter().find(|(rust, _)| *rust == name).map_or(name, |(_, key)| key)
}

/// Walks float parameters with their diffusers names (and gradients, when given).
struct Walk<'a, F: FnMut(String, Tensor<1>, Vec<usize>, Option<Tensor<1>>)> {
    path: Vec<String>,
    grads: Option<&'a burn::tensor::Gradients>,
    f: &'a mut F,
}

impl<F: FnMut(String, Tensor<1>, Vec<usize>, Option<Tensor<1>>)> ModuleVisitor for Walk<'_, F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(segment(name).to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let grad = self.grads.and_then(|g| value.grad(g)).map(|g| g.reshape([-1]));
        (self.f)(self.path.join("."), value.reshape([-1]), shape, grad);
    }
}

/// Calls `f(name, flattened tensor, shape)` for every float parameter.
pub fn for_each_param<M: Module, F: FnMut(String, Tensor<1>, Vec<usize>)>(module: &M, mut f: F) {
    let mut g = |name, t, shape, _| f(name, t, shape);
    module.visit(&mut Walk { path: Vec::new(), grads: None, f: &mut g });
}

/// `(name, shape)` of every parameter, in visiting order.
pub fn param_shapes<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for_each_param(module, |name, _, shape| out.push((name, shape)));
    out
}

pub fn param_count<M: Module>(module: &M) -> usize {
    param_shapes(module).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// `(name, flattened gradient if any, shape)` of every float parameter after a backward pass.
pub fn param_grads<M: Module>(
    module: &M,
    grads: &burn::tensor::Gradients,
) -> Vec<(String, Option<Tensor<1>>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut f = |name, _, shape, grad| out.push((name, grad, shape));
    module.visit(&mut Walk { path: Vec::new(), grads: Some(grads), f: &mut f });
    out
}

/// `module` with each float parameter named in `values` (flattened, under the names
/// [`for_each_param`] gives) replaced by that value reshaped to the parameter's shape;
/// the others are kept. Tensors are taken as given: the caller puts them on the module's
/// device (an old policy or a snapshot shares the untouched tensors with its source).
pub fn set_params<M: Module>(module: M, values: &std::collections::BTreeMap<String, Tensor<1>>) -> M {
    module.map(&mut SetParams { path: Vec::new(), values })
}

struct SetParams<'a> {
    path: Vec<String>,
    values: &'a std::collections::BTreeMap<String, Tensor<1>>,
}

impl burn::module::ModuleMapper for SetParams<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(segment(name).to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(value) = self.values.get(&self.path.join(".")) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        Param::from_mapped_value(id, value.clone().reshape(tensor.dims()), mapper)
    }
}

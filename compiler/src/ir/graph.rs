//! A step program: a petgraph `StableGraph` of typed nodes. Every node keeps
//! the source span it was lowered from. Builders infer each node's type, so a
//! program is well-typed by construction; [`super::verify`] re-checks it.

use super::dim::Dim;
use super::infer::infer;
use super::memory::MemoryPlan;
use super::op::{DType, Op};
use ecarc_grammar::Span;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};

/// dtype and shape of a value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl TensorType {
    pub fn f32(shape: Vec<Dim>) -> Self {
        TensorType { dtype: DType::F32, shape }
    }
    pub fn i64(shape: Vec<Dim>) -> Self {
        TensorType { dtype: DType::I64, shape }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> Dim {
        super::dim::product(&self.shape)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    /// Where in the `.ecar` sources this node comes from.
    pub span: Option<Span>,
}

/// Edge weight: the operand position at the consumer.
pub type Operand = u8;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    pub g: StableGraph<Node, Operand>,
    /// Named results, in order.
    pub outputs: Vec<(String, NodeIndex)>,
    /// Outputs that update the state of the same name in place: each is a
    /// `write_slice` of that state, its only use, so a backend may write into
    /// the state's memory instead of allocating a new value
    /// ([`super::verify`] checks this).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<String>,
    /// The slot of every value, once the `mem` pass has planned memory
    /// (`ir/memory.rs`); a rewrite after it drops the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPlan>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph { name: name.into(), g: StableGraph::new(), outputs: vec![], updates: vec![], memory: None }
    }

    /// Add a node with operands, inferring its type. Panics on a type error:
    /// lowering is the only caller and a type error there is a compiler bug.
    pub fn add(&mut self, op: Op, operands: &[NodeIndex], span: Option<Span>) -> NodeIndex {
        match self.try_add(op, operands, span) {
            Ok(n) => n,
            Err(e) => panic!("ill-typed node in `{}`: {e}", self.name),
        }
    }

    pub fn try_add(&mut self, op: Op, operands: &[NodeIndex], span: Option<Span>) -> Result<NodeIndex, String> {
        if operands.len() > Operand::MAX as usize + 1 {
            return Err(format!("{}: more than {} operands", op.name(), Operand::MAX as usize + 1));
        }
        let tys: Vec<&TensorType> = operands.iter().map(|&o| &self.g[o].ty).collect();
        let ty = infer(&op, &tys).map_err(|e| format!("{}: {e}", op.name()))?;
        let n = self.g.add_node(Node { op, ty, span });
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, i as Operand);
        }
        Ok(n)
    }

    /// A node whose type its builder knows (a `fused` node takes its root's):
    /// no inference. Only for passes, which `Pipeline::checked` verifies after.
    pub(crate) fn add_typed(
        &mut self,
        op: Op,
        operands: &[NodeIndex],
        ty: TensorType,
        span: Option<Span>,
    ) -> NodeIndex {
        let n = self.g.add_node(Node { op, ty, span });
        for (i, &o) in operands.iter().enumerate() {
            self.g.add_edge(o, n, i as Operand);
        }
        n
    }

    /// A source node with an explicit type (inputs, params, state; a `Const`
    /// goes through [`Graph::add`], which infers its scalar type).
    pub fn source(&mut self, op: Op, ty: TensorType, span: Option<Span>) -> NodeIndex {
        assert!(
            matches!(op, Op::Input { .. } | Op::Param { .. } | Op::State { .. }),
            "not a typed source: {}",
            op.name()
        );
        self.g.add_node(Node { op, ty, span })
    }

    pub fn output(&mut self, name: impl Into<String>, n: NodeIndex) {
        self.outputs.push((name.into(), n));
    }

    /// Output `name` (the state `name` with a slice written) as an in-place update.
    pub fn update(&mut self, name: impl Into<String>, n: NodeIndex) {
        let name = name.into();
        self.outputs.push((name.clone(), n));
        self.updates.push(name);
    }

    /// Whether output `name` updates its state in place.
    pub fn is_update(&self, name: &str) -> bool {
        self.updates.iter().any(|u| u == name)
    }

    /// Operands of a node in operand order.
    pub fn operands(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut ops: Vec<(Operand, NodeIndex)> =
            self.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        ops.sort_by_key(|(i, _)| *i);
        ops.into_iter().map(|(_, s)| s).collect()
    }

    pub fn ty(&self, n: NodeIndex) -> &TensorType {
        &self.g[n].ty
    }

    /// Nodes in a topological order (sources first); `None` if cyclic.
    pub fn topo(&self) -> Option<Vec<NodeIndex>> {
        petgraph::algo::toposort(&self.g, None).ok()
    }

    pub fn node_count(&self) -> usize {
        self.g.node_count()
    }
}

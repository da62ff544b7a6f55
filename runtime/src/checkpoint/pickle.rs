//! A small, strict pickle machine for the `data.pkl` of a PyTorch zip
//! checkpoint. It understands the opcodes `torch.save` (protocol 2) emits
//! for state dicts and builds inert values from them: `None`, booleans,
//! integers, floats, strings, bytes, lists, tuples, dicts, and three kinds of
//! object it knows by name: `collections.OrderedDict` (a dict), tensors
//! (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
//! `_rebuild_parameter_with_state`) and storages (persistent ids
//! `('storage', torch.XStorage, key, location, numel)`).
//!
//! Nothing is ever executed: a `GLOBAL` naming anything else (`os.system`,
//! `builtins.eval`, a user class, `argparse.Namespace`) stops the machine
//! with an error naming it, as do the opcodes that build arbitrary objects
//! (`NEWOBJ`, `INST`, `OBJ`, `EXT*`) and every opcode outside the list in
//! [`Machine::run`].
//!
//! # Bounds
//! Every value is a small handle; containers live in one arena. Each opcode
//! adds at most one value or one container element, so memory is linear in
//! the pickle's length; lengths read from the stream (strings, bytes,
//! integers) are checked against the bytes that remain before anything is
//! allocated, and the number of container elements is capped at
//! [`MAX_ELEMENTS`]. Tensor sizes are only recorded here; they are checked
//! against their storage when materialised.

use std::collections::HashMap;
use std::rc::Rc;

/// The most container elements (and arena objects) one pickle may build.
pub const MAX_ELEMENTS: usize = 1 << 24;

/// A storage's element type, from its `torch.XStorage` class name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    pub fn from_class(name: &str) -> Option<StorageType> {
        Some(match name {
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "DoubleStorage" => StorageType::F64,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, StorageType::F32 | StorageType::F16 | StorageType::BF16 | StorageType::F64)
    }
    /// PyTorch's class name.
    pub fn class(self) -> &'static str {
        match self {
            StorageType::F32 => "FloatStorage",
            StorageType::F16 => "HalfStorage",
            StorageType::BF16 => "BFloat16Storage",
            StorageType::F64 => "DoubleStorage",
            StorageType::I64 => "LongStorage",
            StorageType::I32 => "IntStorage",
            StorageType::I16 => "ShortStorage",
            StorageType::I8 => "CharStorage",
            StorageType::U8 => "ByteStorage",
            StorageType::Bool => "BoolStorage",
        }
    }
}

/// The globals the machine knows. Any other is rejected at the `GLOBAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(StorageType),
}

/// A value: scalars inline, containers and objects by arena index.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    /// An object of the arena.
    Obj(usize),
}

/// A tensor as the pickle describes it: a view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    /// Arena index of the [`Obj::Storage`].
    pub storage: usize,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Obj {
    Dict(Vec<(Value, Value)>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Tensor(TensorMeta),
    /// A persistent id `('storage', type, key, location, numel)`.
    Storage {
        ty: StorageType,
        key: String,
        numel: usize,
    },
}

/// What a pickle built: the arena and the top value.
#[derive(Debug)]
pub struct Pickle {
    pub arena: Vec<Obj>,
    pub root: Value,
}

impl Pickle {
    pub fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.arena.get(*i),
            _ => None,
        }
    }
}

/// Run `bytes` (a whole pickle) and return what it built, or why it was refused.
pub fn load(bytes: &[u8]) -> Result<Pickle, String> {
    Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
        elements: 0,
    }
    .run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Obj>,
    elements: usize,
}

fn global(module: &str, name: &str) -> Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", class) if class.ends_with("Storage") => match StorageType::from_class(class) {
            Some(t) => Global::Storage(t),
            None => {
                return Err(format!(
                    "storage type `torch.{class}` is not supported (float: Float, Half, BFloat16, Double; \
                     integer: Long, Int, Short, Char, Byte, Bool)"
                ))
            }
        },
        _ => {
            return Err(format!(
                "refusing the pickle global `{module}.{name}`: a checkpoint may only hold tensors, \
                 containers and plain values, and ecarc never runs code from a pickle \
                 (save just the state dict: torch.save(model.state_dict(), path))"
            ))
        }
    })
}

impl<'a> Machine<'a> {
    fn run(mut self) -> Result<Pickle, String> {
        loop {
            let at = self.pos;
            let op = self.byte()?;
            let r = self.step(op);
            match r {
                Ok(true) => {
                    let root = self.pop()?;
                    return Ok(Pickle { arena: self.arena, root });
                }
                Ok(false) => {}
                Err(e) => return Err(format!("pickle byte {at} (opcode 0x{op:02x}): {e}")),
            }
        }
    }

    /// One opcode; `Ok(true)` at `STOP`.
    fn step(&mut self, op: u8) -> Result<bool, String> {
        match op {
            0x80 => {
                let proto = self.byte()?;
                if proto > 5 {
                    return Err(format!("unknown pickle protocol {proto}"));
                }
            }
            0x95 => {
                self.take(8)?; // FRAME: a length hint only
            }
            b'.' => return Ok(true),
            b'(' => self.marks.push(self.stack.len()),
            b')' => self.push_obj(Obj::Tuple(vec![]))?,
            b']' => self.push_obj(Obj::List(vec![]))?,
            b'}' => self.push_obj(Obj::Dict(vec![]))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Tuple(items))?
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items))?
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push_obj(Obj::Dict(pairs))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_obj(Obj::Tuple(items))?
            }
            b'a' => {
                let v = self.pop()?;
                self.extend_list(vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend_list(items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_dict(vec![(k, v)])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.extend_dict(pairs(items)?)?;
            }
            b'q' => {
                let i = self.byte()? as u32;
                self.put(i)?
            }
            b'r' => {
                let i = self.u32()?;
                self.put(i)?
            }
            0x94 => {
                let i = self.memo.len() as u32;
                self.put(i)?
            }
            b'h' => {
                let i = self.byte()? as u32;
                self.get(i)?
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)?
            }
            b'X' => {
                let n = self.u32()? as usize;
                self.string(n)?
            }
            0x8c => {
                let n = self.byte()? as usize;
                self.string(n)?
            }
            0x8d => {
                let n = self.u64()?;
                self.string(usize::try_from(n).map_err(|_| "string length overflows".to_string())?)?
            }
            b'U' | b'C' => {
                let n = self.byte()? as usize;
                let b = self.take(n)?;
                self.push_val(Value::Bytes(b.into()))?
            }
            b'T' | b'B' => {
                let n = self.u32()? as usize;
                let b = self.take(n)?;
                self.push_val(Value::Bytes(b.into()))?
            }
            b'J' => {
                let b = self.take(4)?;
                self.push_val(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))?
            }
            b'K' => {
                let b = self.byte()?;
                self.push_val(Value::Int(b as i64))?
            }
            b'M' => {
                let b = self.take(2)?;
                self.push_val(Value::Int(u16::from_le_bytes(b.try_into().unwrap()) as i64))?
            }
            0x8a => {
                let n = self.byte()? as usize;
                if n > 8 {
                    return Err(format!("integer of {n} bytes is too large"));
                }
                let b = self.take(n)?;
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(b);
                self.push_val(Value::Int(i64::from_le_bytes(buf)))?
            }
            b'G' => {
                let b = self.take(8)?;
                self.push_val(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))?
            }
            0x88 => self.push_val(Value::Bool(true))?,
            0x89 => self.push_val(Value::Bool(false))?,
            b'N' => self.push_val(Value::None)?,
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = global(&module, &name)?;
                self.push_val(Value::Global(g))?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                let g = global(&module, &name)?;
                self.push_val(Value::Global(g))?
            }
            b'R' => {
                let args = self.pop()?;
                let f = self.pop()?;
                let v = self.reduce(f, args)?;
                self.push_val(v)?
            }
            b'b' => {
                let _state = self.pop()?;
                // Only the state of objects the machine built itself: an
                // OrderedDict's attributes (`_metadata`) or a parameter's. It is
                // dropped: nothing in it matters for the values.
                match self.stack.last() {
                    Some(Value::Obj(i)) if matches!(self.arena[*i], Obj::Dict(_) | Obj::Tensor(_)) => {}
                    _ => return Err("BUILD of an object other than a dict or tensor".into()),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent(pid)?;
                self.push_val(v)?
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.stack.last().cloned().ok_or("stack underflow")?;
                self.push_val(v)?
            }
            0x81 | 0x92 | b'i' | b'o' => {
                return Err("refusing an opcode that builds an arbitrary object (NEWOBJ/INST/OBJ)".into())
            }
            _ => return Err(format!("opcode 0x{op:02x} is not one that torch.save writes for a state dict")),
        }
        Ok(false)
    }

    fn reduce(&mut self, f: Value, args: Value) -> Result<Value, String> {
        let Value::Global(g) = f else {
            return Err("REDUCE of something that is not a known global".into());
        };
        let args = match &args {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tuple(a) => a.clone(),
                _ => return Err("REDUCE arguments are not a tuple".into()),
            },
            _ => return Err("REDUCE arguments are not a tuple".into()),
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err("collections.OrderedDict with arguments".into());
                }
                self.alloc(Obj::Dict(vec![]))
            }
            Global::RebuildTensorV2 => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if !(6..=7).contains(&args.len()) {
                    return Err(format!("_rebuild_tensor_v2 with {} arguments, expected 6 or 7", args.len()));
                }
                let storage = match &args[0] {
                    Value::Obj(i) if matches!(self.arena[*i], Obj::Storage { .. }) => *i,
                    _ => return Err("_rebuild_tensor_v2: the first argument is not a storage".into()),
                };
                let offset = self.usize_of(&args[1], "storage offset")?;
                let size = self.usizes(&args[2], "size")?;
                let stride = self.usizes(&args[3], "stride")?;
                if size.len() != stride.len() {
                    return Err(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
                }
                self.alloc(Obj::Tensor(TensorMeta { storage, offset, size, stride }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != n {
                    return Err(format!("parameter rebuild with {} arguments, expected {n}", args.len()));
                }
                match &args[0] {
                    Value::Obj(i) if matches!(self.arena[*i], Obj::Tensor(_)) => Ok(args[0].clone()),
                    _ => Err("parameter rebuild of something that is not a tensor".into()),
                }
            }
            Global::Storage(t) => Err(format!("torch.{} cannot be called", t.class())),
        }
    }

    fn persistent(&mut self, pid: Value) -> Result<Value, String> {
        let bad = || "persistent id is not ('storage', torch.XStorage, key, location, numel)".to_string();
        let items = match &pid {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tuple(t) => t.clone(),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(Global::Storage(ty)), key, Value::Str(_location), numel]
                if &**tag == "storage" =>
            {
                let key = match key {
                    Value::Str(s) => s.to_string(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(bad()),
                };
                let numel = self.usize_of(numel, "storage size")?;
                self.alloc(Obj::Storage { ty: *ty, key, numel })
            }
            _ => Err(bad()),
        }
    }

    fn usize_of(&self, v: &Value, what: &str) -> Result<usize, String> {
        match v {
            Value::Int(i) => usize::try_from(*i).map_err(|_| format!("negative {what} {i}")),
            _ => Err(format!("{what} is not an integer")),
        }
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>, String> {
        match v {
            Value::Obj(i) => match &self.arena[*i] {
                Obj::Tuple(t) => t.iter().map(|x| self.usize_of(x, what)).collect(),
                _ => Err(format!("tensor {what} is not a tuple")),
            },
            _ => Err(format!("tensor {what} is not a tuple")),
        }
    }

    fn count(&mut self, n: usize) -> Result<(), String> {
        self.elements = self.elements.saturating_add(n);
        if self.elements > MAX_ELEMENTS {
            return Err(format!("the pickle builds more than {MAX_ELEMENTS} container elements"));
        }
        Ok(())
    }

    fn alloc(&mut self, obj: Obj) -> Result<Value, String> {
        self.count(1)?;
        self.arena.push(obj);
        Ok(Value::Obj(self.arena.len() - 1))
    }

    fn push_obj(&mut self, obj: Obj) -> Result<(), String> {
        let v = self.alloc(obj)?;
        self.push_val(v)
    }

    fn push_val(&mut self, v: Value) -> Result<(), String> {
        self.count(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) && !self.marks.is_empty() {
            return Err("pop across a mark".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("no mark on the stack")?;
        if m > self.stack.len() {
            return Err("mark beyond the stack".into());
        }
        Ok(self.stack.split_off(m))
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), String> {
        self.count(items.len())?;
        match self.stack.last() {
            Some(Value::Obj(i)) => match &mut self.arena[*i] {
                Obj::List(l) => {
                    l.extend(items);
                    Ok(())
                }
                _ => Err("APPEND to something that is not a list".into()),
            },
            _ => Err("APPEND to something that is not a list".into()),
        }
    }

    fn extend_dict(&mut self, items: Vec<(Value, Value)>) -> Result<(), String> {
        self.count(items.len())?;
        match self.stack.last() {
            Some(Value::Obj(i)) => match &mut self.arena[*i] {
                Obj::Dict(d) => {
                    d.extend(items);
                    Ok(())
                }
                _ => Err("SETITEM on something that is not a dict".into()),
            },
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn put(&mut self, i: u32) -> Result<(), String> {
        let v = self.stack.last().cloned().ok_or("memo put with an empty stack")?;
        self.count(1)?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn get(&mut self, i: u32) -> Result<(), String> {
        let v = self.memo.get(&i).cloned().ok_or_else(|| format!("memo {i} is not set"))?;
        self.push_val(v)
    }

    fn string(&mut self, n: usize) -> Result<(), String> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "a string is not UTF-8".to_string())?;
        self.push_val(Value::Str(s.into()))
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// The next `n` bytes; an error (before any allocation) when fewer remain.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!(
                "the pickle ends early (needs {n} more byte(s) at {}, has {})",
                self.pos,
                self.bytes.len() - self.pos
            )
        })?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    /// A `\n`-terminated ASCII line (GLOBAL's module and name), at most 256 bytes.
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().take(257).position(|&b| b == b'\n').ok_or("GLOBAL name is not terminated")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8".to_string())?.to_string();
        self.pos += n + 1;
        Ok(s)
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("an odd number of dict items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        // {'a': [1, -2, 3.5, True, None, 'x'], 'b': (300, 70000)} at protocol 2, by hand.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'(', 0x8c, 1, b'a', b']', b'q', 1, b'(', b'K', 1, b'J'];
        p.extend((-2i32).to_le_bytes());
        p.push(b'G');
        p.extend(3.5f64.to_be_bytes());
        p.extend([0x88, b'N', 0x8c, 1, b'x', b'e', 0x8c, 1, b'b', b'M']);
        p.extend(300u16.to_le_bytes());
        p.extend([0x8a, 3, 0x70, 0x11, 0x01, 0x86, b'u', b'.']);
        let pk = load(&p).unwrap();
        let Some(Obj::Dict(d)) = pk.obj(&pk.root) else { panic!("{pk:?}") };
        assert_eq!(d.len(), 2);
        let Some(Obj::List(l)) = pk.obj(&d[0].1) else { panic!() };
        assert_eq!(
            l,
            &[Value::Int(1), Value::Int(-2), Value::Float(3.5), Value::Bool(true), Value::None, Value::Str("x".into())]
        );
        let Some(Obj::Tuple(t)) = pk.obj(&d[1].1) else { panic!() };
        assert_eq!(t, &[Value::Int(300), Value::Int(70000)]);
    }

    #[test]
    fn globals_outside_the_list_are_refused_unrun() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
        let e = load(p).unwrap_err();
        assert!(e.contains("refusing the pickle global `os.system`"), "{e}");
        let p = b"\x80\x02\x8c\x08builtins\x8c\x04eval\x93.";
        assert!(load(p).unwrap_err().contains("`builtins.eval`"));
        assert!(load(b"\x80\x02ctorch\nComplexFloatStorage\n.").unwrap_err().contains("not supported"));
        assert!(load(b"\x80\x02\x81.").unwrap_err().contains("NEWOBJ"));
    }

    #[test]
    fn malformed_streams_are_errors() {
        for p in [
            &b""[..],
            b"\x80",
            b"\x80\x02",
            b"X\xff\xff\xff\xff",
            b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
            b"h\x05.",
            b"a.",
            b"(u.",
            b"]K\x01s.",
            b"\x8a\x09",
            b"R.",
            b"0.",
            b"(K\x010.",
        ] {
            assert!(load(p).is_err(), "{p:?}");
        }
    }
}

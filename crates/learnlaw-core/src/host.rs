//! Vector operations on host memory, shared by the CPU engines (their `Engine::Vec` is `Vec<R>`),
//! and the vectorisable reductions their loops use.
use rayon::prelude::*;

use crate::{simplex, Error, Real, Result};

/// Block size for parallel elementwise loops: large enough that a task outweighs its scheduling.
const BLOCK: usize = 1 << 16;

/// a·b with 16 independent accumulators so the loop vectorises without fast-math.
#[inline(always)]
pub fn dot<R: Real>(a: &[R], b: &[R]) -> R {
    let (a16, at) = a.as_chunks::<16>();
    let (b16, bt) = b[..a.len()].as_chunks::<16>();
    let mut acc = [R::zero(); 16];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..16 {
            acc[i] = acc[i] + x[i] * y[i];
        }
    }
    let tail: R = at.iter().zip(bt).map(|(&x, &y)| x * y).sum();
    acc.iter().copied().sum::<R>() + tail
}

/// Σ a, with 16 independent accumulators (vectorises).
#[inline(always)]
pub fn sum<R: Real>(a: &[R]) -> R {
    let (a16, at) = a.as_chunks::<16>();
    let mut acc = [R::zero(); 16];
    for x in a16 {
        for i in 0..16 {
            acc[i] = acc[i] + x[i];
        }
    }
    acc.iter().copied().sum::<R>() + at.iter().copied().sum::<R>()
}

/// max a (−∞ for an empty slice), with 16 independent lanes (vectorises).
#[inline(always)]
pub fn max<R: Real>(a: &[R]) -> R {
    let (a16, at) = a.as_chunks::<16>();
    let mut acc = [R::neg_infinity(); 16];
    for x in a16 {
        for i in 0..16 {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    acc.iter().chain(at).copied().fold(R::neg_infinity(), R::max)
}

pub fn check_len<R>(what: &str, v: &[R], len: usize) -> Result<()> {
    if v.len() == len {
        Ok(())
    } else {
        Err(Error::shape(what, len, v.len()))
    }
}

/// Row t of a [T, N] policy.
pub fn policy_row<R>(gamma: &[R], t: usize, n: usize) -> Result<&[R]> {
    gamma.get(t * n..(t + 1) * n).ok_or_else(|| Error::shape("policy", format!("at least {} rows of {n}", t + 1), gamma.len()))
}

/// `curve[i]` ← value: a forward step's dev loss written into the unroll's curve.
pub fn set_curve_entry<R: Real>(curve: &mut [R], i: usize, value: f64) -> Result<()> {
    let len = curve.len();
    *curve.get_mut(i).ok_or_else(|| Error::shape("dev-loss curve", format!("more than {i} entries"), len))? = R::of(value);
    Ok(())
}

pub fn copy<R: Real>(src: &[R], dst: &mut [R]) -> Result<()> {
    check_len("copy destination", dst, src.len())?;
    dst.copy_from_slice(src);
    Ok(())
}

/// x ← a·x.
pub fn scale<R: Real>(a: f64, x: &mut [R]) {
    let a = R::of(a);
    x.par_chunks_mut(BLOCK).for_each(|x| x.iter_mut().for_each(|v| *v = *v * a));
}

/// y ← y + a·x.
pub fn axpy<R: Real>(a: f64, x: &[R], y: &mut [R]) -> Result<()> {
    check_len("axpy y", y, x.len())?;
    let a = R::of(a);
    y.par_chunks_mut(BLOCK).zip(x.par_chunks(BLOCK)).for_each(|(y, x)| add_scaled(a, x, y));
    Ok(())
}

/// y ← y + a·x on one piece: `axpy`'s arithmetic, shared with `simplex::axpy_project` so the
/// fused outer step gives the bits of the two calls (inlined there into its dispatched code).
#[inline(always)]
pub(crate) fn add_scaled<R: Real>(a: R, x: &[R], y: &mut [R]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = *y + a * x);
}

/// Projects every row of `v` onto the simplex; a non-finite entry is an error, not a garbage policy.
pub fn project_simplex_rows<R: Real>(v: &mut [R], row_len: usize) -> Result<()> {
    crate::engine::rows_of("policy rows", v.len(), row_len)?;
    if let Some(i) = v.par_iter().position_any(|x| !x.is_finite()) {
        return Err(Error::non_finite_policy(i, row_len));
    }
    simplex::project_rows(v, row_len);
    Ok(())
}

/// `axpy` then `project_simplex_rows`, one row at a time (`simplex::axpy_project`): the row is
/// read from memory once and updated, checked and projected while it is in cache, where the two
/// calls pass over the whole policy three times (the same bits).
pub fn axpy_project_simplex_rows<R: Real>(a: f64, x: &[R], y: &mut [R], row_len: usize) -> Result<()> {
    crate::engine::rows_of_pair("policy rows", y.len(), x.len(), row_len)?;
    let a = R::of(a);
    y.par_chunks_mut(row_len)
        .zip(x.par_chunks(row_len))
        .enumerate()
        .try_for_each(|(r, (y, x))| simplex::axpy_project(a, x, y).map_err(|i| Error::non_finite_policy(r * row_len + i, row_len)))
}

/// The `Engine` vector methods of an engine whose vectors are host `Vec<R>`s (the CPU engines).
macro_rules! host_vector_methods {
    () => {
        fn zeros(&mut self, len: usize) -> Result<Vec<R>> {
            Ok(vec![R::zero(); len])
        }
        fn upload(&mut self, host: &[R]) -> Result<Vec<R>> {
            Ok(host.to_vec())
        }
        fn download(&mut self, v: &Vec<R>) -> Result<Vec<R>> {
            Ok(v.clone())
        }
        fn copy(&mut self, src: &Vec<R>, dst: &mut Vec<R>) -> Result<()> {
            $crate::host::copy(src, dst)
        }
        fn scale(&mut self, a: f64, x: &mut Vec<R>) -> Result<()> {
            $crate::host::scale(a, x);
            Ok(())
        }
        fn axpy(&mut self, a: f64, x: &Vec<R>, y: &mut Vec<R>) -> Result<()> {
            $crate::host::axpy(a, x, y)
        }
        fn project_simplex_rows(&mut self, v: &mut Vec<R>, row_len: usize) -> Result<()> {
            $crate::host::project_simplex_rows(v, row_len)
        }
        fn axpy_project_simplex_rows(&mut self, a: f64, x: &Vec<R>, y: &mut Vec<R>, row_len: usize) -> Result<()> {
            $crate::host::axpy_project_simplex_rows(a, x, y, row_len)
        }
    };
}
pub(crate) use host_vector_methods;

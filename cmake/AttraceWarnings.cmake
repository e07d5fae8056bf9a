# Per-target compile settings shared by every attrace target.
# -ffp-contract=off: no FMA contraction chosen by the compiler, so results do not depend on
# whether a build machine's compiler fused a multiply-add (determinism spec, point 3).
function(attrace_target_settings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -ffp-contract=off>)
endfunction()

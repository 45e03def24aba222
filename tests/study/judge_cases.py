"""Hand-written responses for the rule judge: each behaviour present and absent, and look-alikes
(the behaviour's keyword without the behaviour). (text, set of behaviours present)."""

CASES: list[tuple[str, set[str]]] = [
    # -- verification
    ("x + 3 = 7, so x = 4. Let me check: 4 + 3 = 7. \\boxed{4}", {"verification"}),
    ("The area is 6*4 = 24. Substituting 24 back into the perimeter formula gives the same width. \\boxed{24}",
     {"verification"}),
    ("So n = 5. Verification: 5^2 - 5 = 20, which matches. \\boxed{5}", {"verification"}),
    ("We get 12 apples. This checks out with the total of 20. \\boxed{12}", {"verification"}),
    ("Tom writes a check for $30 and keeps a checkbook. 50 - 30 = 20. \\boxed{20}", set()),   # look-alike
    ("Check out this identity: (a+b)^2 = a^2 + 2ab + b^2, so the answer is 49. \\boxed{49}", set()),  # look-alike
    ("The verified accounts number 7 + 8 = 15. \\boxed{15}", set()),  # look-alike: adjective in the problem
    # -- backtracking
    ("3*4 = 7. Wait, that's wrong: 3*4 = 12. \\boxed{12}", {"backtracking"}),
    ("Using the quadratic formula gives complex roots. This approach doesn't work, so let's try a different "
     "approach: factor it as (x-2)(x-3). \\boxed{2}", {"backtracking"}),
    ("I made a mistake in the second line; let me redo it. 18/3 = 6. \\boxed{6}", {"backtracking"}),
    ("Hmm, wait. The train leaves at 3, not 2, so 5 - 3 = 2 hours. \\boxed{2}", {"backtracking"}),
    ("The customers wait 5 minutes each, so 4 customers wait 4*5 = 20 minutes. \\boxed{20}", set()),  # look-alike
    ("She had to wait for the bus; the ride took 15 minutes. 15 + 10 = 25. \\boxed{25}", set()),  # look-alike
    ("The statement 'x is wrong' is a red herring. 2 + 2 = 4. \\boxed{4}", set()),  # look-alike (quoted, not a self-correction)
    # -- subgoal setting
    ("First, we find the width: 24 / 6 = 4. Then, we compute the perimeter: 2*(6+4) = 20. \\boxed{20}",
     {"subgoal_setting"}),
    ("Step 1: find the cost of the apples, 3*2 = 6.\nStep 2: add the pears, 6 + 4 = 10. \\boxed{10}",
     {"subgoal_setting"}),
    ("To find the total distance, we first need the speed: 60/2 = 30 km/h, so 30*5 = 150. \\boxed{150}",
     {"subgoal_setting"}),
    ("The first term is 3 and the ratio is 2, so the fifth term is 3*2^4 = 48. \\boxed{48}", set()),  # look-alike
    ("She came first in the race and got 10 points. \\boxed{10}", set()),  # look-alike
    # -- enumeration
    ("Case 1: x is even, then x^2 is even. Case 2: x is odd, then x^2 is odd. So the answer is 2 cases. \\boxed{2}",
     {"enumeration"}),
    ("Try n = 1: 1 + 1 = 2, not prime squared. n = 2: 4 + 1 = 5, n = 3: 9 + 1 = 10. So n = 2. \\boxed{2}",
     {"enumeration"}),
    ("Let's list all possible pairs: (1,6), (2,3), (3,2), (6,1). There are 4. \\boxed{4}", {"enumeration"}),
    ("In this case the sum is 4 + 5 = 9. \\boxed{9}", set()),  # look-alike: one case
    ("If x = 3, then 2x = 6. \\boxed{6}", set()),  # look-alike: one value
    # -- several at once, and none
    ("First, we compute 12*3 = 36. Then, we subtract 6: 36 - 6 = 30. Wait, the question asks for twice that, "
     "so let me redo it: 2*30 = 60. Let me verify: 60/2 = 30 and 30 + 6 = 36. \\boxed{60}",
     {"subgoal_setting", "backtracking", "verification"}),
    ("Case 1: a = 0 gives 0. Case 2: a = 1 gives 1. Let me double-check case 2: 1^2 = 1. \\boxed{1}",
     {"enumeration", "verification"}),
    ("7 + 8 = 15. \\boxed{15}", set()),
    ("\\boxed{42}", set()),
]

// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AttributionLedger} from "../src/AttributionLedger.sol";

/// The Foundry cheatcodes these tests use (forge-std is not available offline).
interface Vm {
    function warp(uint256) external;
    function prank(address) external;
    function deal(address, uint256) external;
    function expectRevert(bytes calldata) external;
    function expectRevert(bytes4) external;
    function addr(uint256) external returns (address);
    function sign(uint256, bytes32) external returns (uint8, bytes32, bytes32);
    function recordLogs() external;
    function getRecordedLogs() external returns (Log[] memory);
}

struct Log {
    bytes32[] topics;
    bytes data;
    address emitter;
}

contract AttributionLedgerTest {
    Vm constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    AttributionLedger ledger;
    address constant ARBITER = address(0xA4B1);
    address constant ALICE = address(0xA11CE);
    address constant BOB = address(0xB0B);
    uint64 constant EPOCH = 7;
    bytes32 constant T1 = keccak256("tranche-1");
    bytes32 constant T2 = keccak256("tranche-2");

    receive() external payable {}

    function setUp() public {
        ledger = new AttributionLedger(ARBITER, 1 days);
        vm.deal(address(this), 100 ether);
    }

    function leaf(bytes32 t, address a, uint256 s, uint256 amt) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(EPOCH, t, a, s, amt))));
    }

    /// Two leaves: the root is the sorted-pair hash and each proof is the other leaf.
    function commitTwo() internal returns (bytes32 l1, bytes32 l2) {
        l1 = leaf(T1, ALICE, 6e17, 600);
        l2 = leaf(T2, BOB, 4e17, 400);
        bytes32 root = l1 < l2 ? keccak256(abi.encode(l1, l2)) : keccak256(abi.encode(l2, l1));
        ledger.commitEpoch{value: 1000}(EPOCH, root, keccak256("manifest"), 1000, "file://m.json");
    }

    function proofOf(bytes32 sibling) internal pure returns (bytes32[] memory p) {
        p = new bytes32[](1);
        p[0] = sibling;
    }

    function testCommitWaitClaimPaysEveryone() public {
        (bytes32 l1, bytes32 l2) = commitTwo();
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.NotFinal.selector, EPOCH, uint64(block.timestamp + 1 days)));
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
        vm.warp(block.timestamp + 1 days);
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
        vm.prank(BOB); // anyone may send a claim; the account is paid
        ledger.claim(EPOCH, T2, BOB, 4e17, 400, proofOf(l1));
        require(ALICE.balance == 600 && BOB.balance == 400, "balances");
        require(address(ledger).balance == 0, "pool fully paid");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.AlreadyClaimed.selector, EPOCH, l1));
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
    }

    function testTamperedClaimsAreRejected() public {
        (, bytes32 l2) = commitTwo();
        vm.warp(block.timestamp + 1 days);
        vm.expectRevert(AttributionLedger.InvalidProof.selector);
        ledger.claim(EPOCH, T1, ALICE, 6e17, 601, proofOf(l2)); // changed amount
        vm.expectRevert(AttributionLedger.InvalidProof.selector);
        ledger.claim(EPOCH, T1, BOB, 6e17, 600, proofOf(l2)); // changed account
        vm.expectRevert(AttributionLedger.InvalidProof.selector);
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(keccak256("x"))); // wrong sibling
    }

    function testOnlySubmitterCommitsWithExactFunding() public {
        vm.deal(ALICE, 1 ether);
        vm.prank(ALICE);
        vm.expectRevert(AttributionLedger.Unauthorized.selector);
        ledger.commitEpoch{value: 1}(1, bytes32(0), bytes32(0), 1, "");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.WrongValue.selector, 5, 6));
        ledger.commitEpoch{value: 5}(1, bytes32(0), bytes32(0), 6, "");
        commitTwo();
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.EpochExists.selector, EPOCH));
        ledger.commitEpoch{value: 1000}(EPOCH, bytes32(uint256(1)), bytes32(0), 1000, "");
    }

    function testDisputeFreezesAndUpheldCancelsAndRefunds() public {
        (, bytes32 l2) = commitTwo();
        ledger.dispute(EPOCH, keccak256("recomputation differs"));
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.Disputed.selector, EPOCH));
        ledger.dispute(EPOCH, bytes32(0));
        vm.warp(block.timestamp + 2 days);
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.Disputed.selector, EPOCH));
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
        vm.expectRevert(AttributionLedger.Unauthorized.selector);
        ledger.resolve(EPOCH, true);
        uint256 before = address(this).balance;
        vm.prank(ARBITER);
        ledger.resolve(EPOCH, true);
        require(address(this).balance == before + 1000, "refund");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.Cancelled.selector, EPOCH));
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
        commitTwo(); // a cancelled epoch may be committed again
    }

    function testRejectedDisputeContinuesAndLateDisputeFails() public {
        (, bytes32 l2) = commitTwo();
        ledger.dispute(EPOCH, bytes32(0));
        vm.prank(ARBITER);
        ledger.resolve(EPOCH, false);
        vm.prank(ARBITER);
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.NotDisputed.selector, EPOCH));
        ledger.resolve(EPOCH, false);
        vm.warp(block.timestamp + 1 days);
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.ChallengeClosed.selector, EPOCH));
        ledger.dispute(EPOCH, bytes32(0));
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
    }

    function testUnknownEpoch() public {
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.UnknownEpoch.selector, 99));
        ledger.dispute(99, bytes32(0));
    }

    function testReceiptSignerRecovers() public {
        uint256 pk = 0xA77AC3;
        bytes32 digest = ledger.receiptDigest(EPOCH, keccak256("root"), keccak256("m"), 1000);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        require(ledger.receiptSigner(EPOCH, keccak256("root"), keccak256("m"), 1000, abi.encodePacked(r, s, v)) == vm.addr(pk), "signer");
    }

    // ---- registry ----

    function contentLeaf(bytes32 digest) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(digest))));
    }

    function pairRoot(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    function testRegistrationIsOrderedIdempotentAndDuplicatesAreVisible() public {
        bytes32 root = pairRoot(contentLeaf(keccak256("ex-1")), contentLeaf(keccak256("ex-2")));
        vm.recordLogs();
        require(ledger.registerTranche("clinic-north", ALICE, "CC-BY-4.0", root, 2) == 1, "first order");
        require(ledger.registerTranche("clinic-north", ALICE, "CC-BY-4.0", root, 2) == 1, "idempotent");
        vm.prank(BOB);
        require(ledger.registerTranche("mirror-north", BOB, "CC0", root, 2) == 2, "copy is recorded");
        Log[] memory logs = ledger_logs();
        require(logs.length == 2, "one event per new registration");
        (uint64 order,,, bytes32 sameContentAs,,) =
            abi.decode(logs[1].data, (uint64, uint64, address, bytes32, string, string));
        require(order == 2 && sameContentAs == keccak256("clinic-north"), "copy names the original");
        (,,, bytes32 firstSame,,) = abi.decode(logs[0].data, (uint64, uint64, address, bytes32, string, string));
        require(firstSame == bytes32(0), "the original names nobody");
        require(ledger.registrationCount() == 2, "count");
        AttributionLedger.Registration memory r = ledger.registrationAt(2);
        require(r.account == BOB && r.registrant == BOB && r.order == 2 && r.contentRoot == root, "copy record");
        require(keccak256(bytes(r.id)) == keccak256("mirror-north") && keccak256(bytes(r.license)) == keccak256("CC0"), "strings");
        require(ledger.registration(keccak256("clinic-north")).registrant == address(this), "registrant");
        require(ledger.firstWithContent(root) == keccak256("clinic-north"), "first with content");
        bytes32 tid = keccak256("clinic-north");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.TrancheExists.selector, tid));
        ledger.registerTranche("clinic-north", ALICE, "CC-BY-4.0", keccak256("other"), 2); // other content
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.TrancheExists.selector, tid));
        ledger.registerTranche("clinic-north", BOB, "CC-BY-4.0", root, 2); // other account
        vm.expectRevert(AttributionLedger.EmptyTranche.selector);
        ledger.registerTranche("", ALICE, "", root, 2);
        vm.expectRevert(AttributionLedger.EmptyTranche.selector);
        ledger.registerTranche("x", ALICE, "", root, 0);
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.UnknownTranche.selector, bytes32(uint256(3))));
        ledger.registrationAt(3);
    }

    function ledger_logs() internal returns (Log[] memory) {
        return vm.getRecordedLogs();
    }

    function testExampleMembershipIsProvenWithStandardTreeProofs() public {
        bytes32 d1 = keccak256("ex-1");
        bytes32 d2 = keccak256("ex-2");
        ledger.registerTranche("t", ALICE, "", pairRoot(contentLeaf(d1), contentLeaf(d2)), 2);
        bytes32 tid = keccak256("t");
        require(ledger.verifyExample(tid, d1, proofOf(contentLeaf(d2))), "d1 is in");
        require(ledger.verifyExample(tid, d2, proofOf(contentLeaf(d1))), "d2 is in");
        require(!ledger.verifyExample(tid, keccak256("ex-3"), proofOf(contentLeaf(d2))), "other digest is not");
        require(!ledger.verifyExample(tid, d1, proofOf(contentLeaf(d1))), "wrong sibling");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.UnknownTranche.selector, keccak256("u")));
        ledger.verifyExample(keccak256("u"), d1, proofOf(d2));
    }

    // ---- revisions ----

    function revisionOf(uint64 epoch) internal view returns (uint32 revision, bytes32 root) {
        (root,,,,,,, revision) = ledger.epochs(epoch);
    }

    function testUpheldDisputeThenCorrectedRevisionClaimsFollowIt() public {
        (bytes32 l1, bytes32 l2) = commitTwo();
        (uint32 rev, bytes32 oldRoot) = revisionOf(EPOCH);
        require(rev == 1, "first revision");
        ledger.dispute(EPOCH, keccak256("verification.json"));
        vm.prank(ARBITER);
        ledger.resolve(EPOCH, true);
        // Corrected: ALICE 500, BOB 500.
        bytes32 n1 = leaf(T1, ALICE, 5e17, 500);
        bytes32 n2 = leaf(T2, BOB, 5e17, 500);
        ledger.commitEpoch{value: 1000}(EPOCH, pairRoot(n1, n2), keccak256("manifest-2"), 1000, "file://m2.json");
        (uint32 rev2, bytes32 newRoot) = revisionOf(EPOCH);
        require(rev2 == 2 && newRoot == pairRoot(n1, n2), "second revision is live");
        require(ledger.revisionRoot(EPOCH, 1) == oldRoot && ledger.revisionRoot(EPOCH, 2) == newRoot, "history");
        vm.warp(block.timestamp + 1 days);
        vm.expectRevert(AttributionLedger.InvalidProof.selector); // the cancelled revision's leaf
        ledger.claim(EPOCH, T1, ALICE, 6e17, 600, proofOf(l2));
        ledger.claim(EPOCH, T1, ALICE, 5e17, 500, proofOf(n2));
        ledger.claim(EPOCH, T2, BOB, 5e17, 500, proofOf(n1));
        require(ALICE.balance == 500 && BOB.balance == 500 && address(ledger).balance == 0, "claims add up to the pool");
        vm.expectRevert(abi.encodeWithSelector(AttributionLedger.EpochExists.selector, EPOCH)); // live: no third revision
        ledger.commitEpoch{value: 1000}(EPOCH, l1, bytes32(0), 1000, "");
    }
}

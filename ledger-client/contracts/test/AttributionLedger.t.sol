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
}
